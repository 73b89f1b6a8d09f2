"""``mlip-analyse msd``: mean-squared displacement and self-diffusion (:mod:`mlip_server.analysis.msd`) ->
``msd.dat``, ``msd.png``, summary section ``msd``. Units: Å, ps; D in Å²/ps and 10⁻⁵ cm²/s."""

from __future__ import annotations

from .. import plots
from ..errors import AnalysisInputError, require_box
from .common import TIMESTEP_FIX, Options, frames_info, water_or_none, write_outputs

__all__ = ["msd"]


def msd(u, opt: Options) -> dict:
    """Oxygen (or molecular-centre) MSD and self-diffusion coefficient."""
    from ..molecules import find_water
    from ..msd import MSD

    require_box(u, "MSD unwrapping")
    if opt.dt_ps is None:
        raise AnalysisInputError(f"the MSD needs the time between frames: {TIMESTEP_FIX}")
    water = find_water(u) if opt.msd_group == "com" else water_or_none(u)
    m = MSD(
        u,
        water=water,
        group=opt.msd_group,
        dt_ps=opt.dt_ps,
        fit_window=opt.fit_window,
        n_blocks=opt.n_blocks,
        viscosity=opt.viscosity,
        temperature=opt.temperature,
    )
    m.run(**opt.run_kw_for(f"MSD ({opt.msd_group})", parallel=False))
    r = m.results
    summary = _summary(r, opt)
    summary.update(frames_info(u, opt))
    table = (
        "msd.dat",
        {"t_ps": r.time, "msd_A2": r.msd, "msd_A2_err": r.msd_err},
        f"mean-squared displacement of {opt.msd_group}, unwrapped, centre-of-mass drift removed",
    )
    return write_outputs(opt, "msd", summary, plots.msd_figure(r), "msd.png", [table])


def _summary(r, opt: Options) -> dict:
    """D (Å²/ps, 10⁻⁵ cm²/s) with its error and fit window; the Yeh-Hummer correction with
    --viscosity."""
    summary = {
        "group": opt.msd_group,
        "D_A2_per_ps": r.D,
        "D_A2_per_ps_err": r.D_err,
        "D_1e-5_cm2_per_s": r.D_1e5cm2s,
        "D_1e-5_cm2_per_s_err": r.D_1e5cm2s_err,
        "fit_window_ps": list(r.fit_window),
        "D_blocks_A2_per_ps": r.D_blocks,
        "n_blocks": opt.n_blocks,
        "drift_removed": True,
        "dt_ps": opt.dt_ps,
    }
    if opt.viscosity:
        summary.update(
            {
                "viscosity_mPa_s": opt.viscosity,
                "temperature_K": opt.temperature,
                "yeh_hummer_correction_A2_per_ps": r.yh_correction,
                "D_yeh_hummer_A2_per_ps": r.D_yh,
                "D_yeh_hummer_1e-5_cm2_per_s": r.D_yh * 10.0,
            }
        )
    return summary
