"""``mlip-analyse rdf``: g(r) and coordination numbers (:mod:`mlip_server.analysis.rdf`) -> ``rdf.dat``,
``rdf.png``, summary section ``rdf``. Units: r in Å."""

from __future__ import annotations

from .. import plots
from ..errors import require_box
from ..reference import load_reference
from .common import Options, checked_rmax, frames_info, water_or_none, write_outputs

__all__ = ["rdf"]


def rdf(u, opt: Options) -> dict:
    """g_OO, g_OH, g_HH (water, intramolecular pairs excluded) or all element pairs."""
    from ..rdf import water_rdfs

    require_box(u, "g(r)")
    refs = [load_reference(s) for s in opt.references]
    rmax = checked_rmax(u, opt)
    water = water_or_none(u)
    if water is not None:
        res = water_rdfs(u, water, rmax=rmax, nbins=opt.nbins, n_blocks=opt.n_blocks, run_kw=opt.run_kw())
    else:
        res = _element_pair_rdfs(u, opt, rmax)
    cols, summary = _table_and_summary(res, opt, rmax, water is not None)
    summary.update(frames_info(u, opt))
    summary["references"] = [{"file": x.label, "partial": x.partial} for x in refs]
    header = (
        f"radial distribution functions; r in Å (bin centres), n = running coordination number; "
        f"errors: block standard errors over {opt.n_blocks} blocks"
    )
    fig = plots.rdf_figure(res, refs, rmax)
    return write_outputs(opt, "rdf", summary, fig, "rdf.png", [("rdf.dat", cols, header)])


def _element_pair_rdfs(u, opt: Options, rmax: float) -> dict:
    """``"AB"`` -> the finished BlockRDF of elements A, B (same-element self pairs excluded)."""
    from ..rdf import BlockRDF

    els = sorted(set(u.atoms.elements))
    res = {}
    for i, a in enumerate(els):
        for b in els[i:]:
            ga, gb = u.select_atoms(f"element {a}"), u.select_atoms(f"element {b}")
            res[a + b] = BlockRDF(
                ga,
                gb,
                nbins=opt.nbins,
                range=(0.0, rmax),
                exclusion_block=(1, 1) if a == b else None,
                n_blocks=opt.n_blocks,
            ).run(**opt.run_kw_for(f"g(r) {a}-{b}"))
    return res


def _table_and_summary(res: dict, opt: Options, rmax: float, water: bool):
    """The columns of ``rdf.dat`` and the summary (first peak, minimum, first-shell coordination)."""
    first = next(iter(res.values())).results
    cols = {"r_A": first.bins}
    summary = {
        "rmax_A": rmax,
        "nbins": opt.nbins,
        "n_blocks": opt.n_blocks,
        "intramolecular_excluded": water,
        "pairs": {},
    }
    for name, a in res.items():
        r = a.results
        cols[f"g_{name}"] = r.rdf
        cols[f"g_{name}_err"] = r.rdf_err
        cols[f"n_{name}"] = r.cn
        cols[f"n_{name}_err"] = r.cn_err
        summary["pairs"][name] = {
            "first_peak_r_A": r.first_peak[0],
            "first_peak_g": r.first_peak[1],
            "first_min_r_A": r.first_min,
            "coordination_first_shell": r.cn_shell,
            "coordination_first_shell_err": r.cn_shell_err,
        }
    return cols, summary
