"""``mlip-analyse dipole``: c_L(r), c_T(r), C1(t), C2(t) and the dielectric constant
(:mod:`mlip_server.analysis.dipoles`) -> ``dipole_correlation.dat``, ``dipole_acf.dat`` (with the frame
interval), ``dipole.png``, summary section ``dipole``. Units: r in Å, t in ps, charges in e, μ in D."""

from __future__ import annotations

from .. import plots
from ..errors import require_box
from .common import TIMESTEP_FIX, Options, checked_rmax, frames_info, write_outputs

__all__ = ["dipole"]


def dipole(u, opt: Options) -> dict:
    """c_L(r), c_T(r); C1(t), C2(t) and reorientation times; dielectric constant (charges)."""
    from ..dipoles import DipolePairCorrelation
    from ..molecules import find_water

    water = find_water(u)
    require_box(u, "c_L(r), c_T(r)")
    rmax = checked_rmax(u, opt)
    nb = max(10, int(round(rmax / 0.1)))
    pc = DipolePairCorrelation(u, water, rmax=rmax, nbins=nb, n_blocks=opt.n_blocks)
    pc.run(**opt.run_kw_for("c_L, c_T"))
    p = pc.results
    summary = {"rmax_A": rmax, "nbins": nb, "n_blocks": opt.n_blocks}
    a = _autocorrelation(u, water, opt, summary)
    _dielectric(u, water, opt, summary)
    summary.update(frames_info(u, opt))
    tables = [
        (
            "dipole_correlation.dat",
            {
                "r_A": p.bins,
                "c_L": p.c_L,
                "c_L_err": p.c_L_err,
                "c_T": p.c_T,
                "c_T_err": p.c_T_err,
                "pairs": p.pairs,
            },
            "longitudinal/transverse dipole correlations over O-O pairs at distance r (Å)",
        )
    ]
    if a is not None:
        tables.append(
            (
                "dipole_acf.dat",
                {"t_ps": a.time, "C1": a.C1, "C1_err": a.C1_err, "C2": a.C2, "C2_err": a.C2_err},
                "dipole autocorrelations C1 = <u(t).u(0)>, C2 = <P2(u(t).u(0))>",
            )
        )
    return write_outputs(opt, "dipole", summary, plots.dipole_figure(p, a), "dipole.png", tables)


def _autocorrelation(u, water, opt: Options, summary: dict):
    """C1(t), C2(t) and τ1, τ2 (ps) into ``summary``; their results, or None without --frame-interval."""
    from ..dipoles import DipoleAutocorrelation

    if opt.dt_ps is None:
        summary["autocorrelation"] = f"skipped: {TIMESTEP_FIX}"
        return None
    ac = DipoleAutocorrelation(u, water, dt_ps=opt.dt_ps, n_blocks=opt.n_blocks)
    ac.run(**opt.run_kw_for("dipole autocorrelation", parallel=False))
    a = ac.results
    summary.update(
        {
            "tau1_ps": a.tau1,
            "tau1_ps_err": a.tau1_err,
            "tau1_complete": a.tau1_complete,
            "tau2_ps": a.tau2,
            "tau2_ps_err": a.tau2_err,
            "tau2_complete": a.tau2_complete,
            "dt_ps": opt.dt_ps,
        }
    )
    return a


def _dielectric(u, water, opt: Options, summary: dict) -> None:
    """The dielectric constant and molecular dipole (D) from --charges (e) into ``summary``."""
    from ..dipoles import DielectricConstant

    if not opt.charges:
        summary["dielectric"] = "skipped: pass --charges, e.g. O=-0.8476 H=0.4238 (SPC/E)"
        return
    de = DielectricConstant(u, water, opt.charges, temperature=opt.temperature, n_blocks=opt.n_blocks)
    de.run(**opt.run_kw_for("total dipole", parallel=False))
    e = de.results
    summary.update(
        {
            "charges_e": opt.charges,
            "temperature_K": opt.temperature,
            "epsilon": e.epsilon,
            "epsilon_err": e.epsilon_err,
            "M2_fluctuation_e2A2": e.M2_fluct,
            "M2_fluctuation_err": e.M2_fluct_err,
            "mu_molecule_D": e.mu_molecule,
            "mu_molecule_D_err": e.mu_molecule_err,
        }
    )
