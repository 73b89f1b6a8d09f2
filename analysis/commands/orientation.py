"""``mlip-analyse orientation``: the distribution of water dipole directions
(:class:`mlip_server.analysis.dipoles.DipoleOrientation`) -> ``orientation.dat``, ``orientation.png``,
summary section ``orientation``. Units: φ in rad, P normalised so isotropic = 1, -ln P in kT."""

from __future__ import annotations

import numpy as np

from .. import plots
from .common import Options, frames_info, write_outputs

__all__ = ["orientation"]


def orientation(u, opt: Options) -> dict:
    """P(cos theta, phi) of the water dipoles and -ln P."""
    from ..dipoles import DipoleOrientation
    from ..molecules import find_water

    water = find_water(u)
    d = DipoleOrientation(u, water, n_cos=opt.n_cos, n_phi=opt.n_phi, n_blocks=opt.n_blocks)
    d.run(**opt.run_kw_for("dipole orientation", parallel=False))
    r = d.results
    cc = 0.5 * (r.cos_edges[1:] + r.cos_edges[:-1])
    pc = 0.5 * (r.phi_edges[1:] + r.phi_edges[:-1])
    C, P = np.meshgrid(cc, pc, indexing="ij")
    summary = {
        "n_cos": opt.n_cos,
        "n_phi": opt.n_phi,
        "n_molecules": water.n_molecules,
        "P_max": float(r.P.max()),
        "P_min": float(r.P.min()),
        "free_energy_range_kT": float(np.nanmax(r.free_energy) - np.nanmin(r.free_energy)),
        "mean_cos_theta": r.mean_cos,
        "mean_cos_theta_err": r.mean_cos_err,
        "P_cos": r.P_cos,
        "P_cos_err": r.P_cos_err,
        "n_blocks": opt.n_blocks,
    }
    summary.update(frames_info(u, opt))
    columns = {
        "cos_theta": C.ravel(),
        "phi_rad": P.ravel(),
        "P": r.P.ravel(),
        "P_err": r.P_err.ravel(),
        "minus_ln_P": r.free_energy.ravel(),
    }
    header = "dipole orientation distribution at bin centres, normalised so isotropic = 1"
    fig = plots.orientation_figure(r, cc)
    return write_outputs(
        opt, "orientation", summary, fig, "orientation.png", [("orientation.dat", columns, header)]
    )
