"""The PNG figure of each ``mlip-analyse`` sub-command (matplotlib, via :mod:`mlip_server.analysis.output`).

Each function takes the results of an analysis (the ``results`` of its MDAnalysis class, as
:mod:`mlip_server.analysis.commands` runs it) and returns the figure; the command saves it after its tables.
Units on the axes: Å, ps, meV, eV/Å, ħ, k_B T.
"""

from __future__ import annotations

import numpy as np

from . import output

__all__ = [
    "rdf_figure",
    "msd_figure",
    "orientation_figure",
    "dipole_figure",
    "symmetry_figure",
    "uncertainty_figure",
    "ELEMENT_COLOURS",
]

ELEMENT_COLOURS = {"H": "0.55", "O": "C3", "C": "k", "N": "C0", "S": "C8", "Na": "C4", "Cl": "C2"}
"""Colours of the elements in per-atom plots (others take the colour cycle)."""


def rdf_figure(analyses: dict, references: list, rmax: float):
    """One panel per pair: g(r) with its block error band and the matching reference curves.

    Parameters
    ----------
    analyses : dict
        Pair name (``OO``, ``OH``, ...) -> a finished :class:`mlip_server.analysis.rdf.BlockRDF`.
    references : list of mlip_server.analysis.reference.Reference
        Curves to overlay on their partial (a curve without a partial goes on the first panel).
    rmax : float
        Largest r shown of the references, Å.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, axes = output.new_figure(1, len(analyses), size=(4.5, 3.6))
    first = next(iter(analyses))
    for ax, (name, a) in zip(axes[0], analyses.items()):
        r = a.results
        output.band(ax, r.bins, r.rdf, r.rdf_err, label=f"g_{name} (this run)")
        for ref in references:
            if ref.partial == name or (ref.partial is None and name == first):
                sel = ref.r <= rmax
                ax.plot(ref.r[sel], ref.g[sel], "--", lw=1, label=ref.label)
        ax.axhline(1.0, color="0.7", lw=0.5)
        ax.set_xlabel("r (Å)")
        ax.set_ylabel(f"g_{name}(r)")
        ax.legend(fontsize=7)
    return fig


def msd_figure(r):
    """MSD with its error band and the linear fit that gives D.

    Parameters
    ----------
    r : MDAnalysis Results
        Of :class:`mlip_server.analysis.msd.MSD`: ``time`` (ps), ``msd``, ``msd_err`` (Å²), ``D`` (Å²/ps),
        ``intercept`` (Å²), ``fit_window`` (ps), ``D_1e5cm2s``, ``D_1e5cm2s_err``.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, axes = output.new_figure()
    ax = axes[0, 0]
    output.band(ax, r.time, r.msd, r.msd_err, label="MSD")
    lo, hi = r.fit_window
    t = np.linspace(lo, hi, 50)
    ax.plot(
        t,
        6 * r.D * t + r.intercept,
        "k--",
        lw=1,
        label=f"fit: D = {r.D_1e5cm2s:.3g} ± {r.D_1e5cm2s_err:.2g} ×1e-5 cm²/s",
    )
    ax.set_xlabel("t (ps)")
    ax.set_ylabel("MSD (Å²)")
    ax.legend(fontsize=8)
    return fig


def orientation_figure(r, cos_centres):
    """-ln P(cos θ, φ) of the dipoles, and the marginal P(cos θ).

    Parameters
    ----------
    r : MDAnalysis Results
        Of :class:`mlip_server.analysis.dipoles.DipoleOrientation`.
    cos_centres : ndarray
        Bin centres of cos θ.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, axes = output.new_figure(1, 2, size=(5.0, 3.8))
    im = axes[0, 0].pcolormesh(r.phi_edges, r.cos_edges, r.free_energy, shading="flat", cmap="viridis")
    fig.colorbar(im, ax=axes[0, 0], label="-ln P (k_B T)")
    axes[0, 0].set_xlabel("φ (rad)")
    axes[0, 0].set_ylabel("cos θ")
    output.band(axes[0, 1], cos_centres, r.P_cos, r.P_cos_err, label="P(cos θ)")
    axes[0, 1].axhline(1.0, color="0.6", lw=0.5)
    axes[0, 1].set_xlabel("cos θ")
    axes[0, 1].set_ylabel("P (isotropic = 1)")
    return fig


def dipole_figure(p, a=None):
    """c_L(r), c_T(r) and, with an autocorrelation, C1(t), C2(t).

    Parameters
    ----------
    p : MDAnalysis Results
        Of :class:`mlip_server.analysis.dipoles.DipolePairCorrelation` (r in Å).
    a : MDAnalysis Results, optional
        Of :class:`mlip_server.analysis.dipoles.DipoleAutocorrelation` (t in ps, τ in ps).

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, axes = output.new_figure(1, 2 if a is not None else 1, size=(5.0, 3.8))
    ax = axes[0, 0]
    output.band(ax, p.bins, p.c_L, p.c_L_err, label="c_L(r)")
    output.band(ax, p.bins, p.c_T, p.c_T_err, label="c_T(r)")
    ax.axhline(0, color="0.6", lw=0.5)
    ax.set_xlabel("r_OO (Å)")
    ax.set_ylabel("pair dipole correlation")
    ax.legend(fontsize=8)
    if a is not None:
        ax = axes[0, 1]
        output.band(
            ax, a.time, a.C1, a.C1_err, label=f"C1, τ1 {'=' if a.tau1_complete else '≥'} {a.tau1:.3g} ps"
        )
        output.band(
            ax, a.time, a.C2, a.C2_err, label=f"C2, τ2 {'=' if a.tau2_complete else '≥'} {a.tau2:.3g} ps"
        )
        ax.set_xlim(0, a.time[-1] / 2 if len(a.time) > 2 else 1)
        ax.set_xlabel("t (ps)")
        ax.set_ylabel("C_n(t)")
        ax.legend(fontsize=8)
    return fig


def symmetry_figure(panels: list):
    """One panel per symmetry diagnostic.

    Parameters
    ----------
    panels : list of (str, object)
        ``("dv", statistics)`` from :func:`mlip_server.analysis.symmetry.delta_v_statistics` (ΔV in meV
        with its autocorrelation inset); ``("cons", (t_ps, conserved_eV))`` (the conserved energy
        in meV from its start); ``("L", results)`` of :class:`mlip_server.analysis.symmetry.AngularMomentum`
        (|L| in ħ and |τ| in meV).

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, axes = output.new_figure(1, len(panels), size=(4.8, 3.6))
    for ax, (kind, data) in zip(axes[0], panels):
        if kind == "dv":
            ax.plot(data["time_ps"], data["series_meV"], lw=0.6)
            ax.set_xlabel("t (ps)")
            ax.set_ylabel("ΔV = V_avg - V_raw (meV)")
            ins = ax.inset_axes([0.6, 0.6, 0.38, 0.35])
            ins.plot(data["lag_ps"][: len(data["lag_ps"]) // 2], data["acf"][: len(data["acf"]) // 2], lw=0.8)
            ins.set_title("ACF", fontsize=7)
            ins.tick_params(labelsize=6)
        elif kind == "cons":
            t, e = data
            ax.plot(t, (e - e[0]) * 1000.0, lw=0.8)
            ax.set_xlabel("t (ps)")
            ax.set_ylabel("conserved - initial (meV)")
        else:
            ax.plot(data.time, np.linalg.norm(data.L_hbar, axis=1), lw=0.8, label="|L| (ħ)")
            ax2 = ax.twinx()
            ax2.plot(data.time, np.linalg.norm(data.torque, axis=1) * 1000.0, "C1", lw=0.8, label="|τ| (meV)")
            ax.set_xlabel("t (ps)")
            ax.set_ylabel("|L| (ħ)")
            ax2.set_ylabel("|τ| (meV)")
    return fig


def _element_colour(el, k):
    return ELEMENT_COLOURS.get(el, f"C{(k + 4) % 10}")


def uncertainty_figure(st: dict, x, x_is_time: bool, worst: list, elements=None):
    """Committee uncertainty along a run (:func:`mlip_server.analysis.uncertainty.uncertainty_statistics`).

    Panels: max_i σ_i and mean_i σ_i per frame (eV/Å; σ_E in eV on a second axis when given);
    the histogram of σ_i over all atoms and frames (stacked by element when known); σ_i per atom
    of the worst frames, coloured by element; with a rotational spread, the rotational and the
    committee force spread per frame (both RMS per Cartesian component, eV/Å) and their ratio.

    Parameters
    ----------
    st : dict
        The statistics.
    x : ndarray
        Time (ps) or step of each frame.
    x_is_time : bool
        Whether ``x`` is time.
    worst : list of (int, int, ndarray)
        (frame, step, σ_i [N] in eV/Å) of the frames to show per atom.
    elements : sequence of str, optional
        Element of each atom.

    Returns
    -------
    matplotlib.figure.Figure
    """
    rot = "ratio" in st
    fig, axes = output.new_figure(1, 4 if rot else 3, size=(4.6, 3.6))
    xl = "t (ps)" if x_is_time else "step"
    ax = axes[0, 0]
    ax.plot(x, st["sigma_max"], lw=0.9, label="max_i σ_i")
    ax.plot(x, st["sigma_mean"], lw=0.9, label="mean_i σ_i")
    ax.set_xlabel(xl)
    ax.set_ylabel("committee force spread (eV/Å)")
    if "energy_std" in st:
        ax2 = ax.twinx()
        ax2.plot(x, st["energy_std"], "C2", lw=0.8, label="σ_E")
        ax2.set_ylabel("σ_E (eV)", color="C2")
    ax.legend(fontsize=7)

    ax = axes[0, 1]
    edges = st["hist_edges"]
    centres, width = 0.5 * (edges[1:] + edges[:-1]), np.diff(edges)
    if st["hist_by_element"]:
        bottom = np.zeros(len(centres))
        for k, (el, c) in enumerate(st["hist_by_element"].items()):
            ax.bar(centres, c, width=width, bottom=bottom, color=_element_colour(el, k), label=el)
            bottom += c
        ax.legend(fontsize=7)
    else:
        ax.bar(centres, st["hist_counts"], width=width)
    ax.set_xlabel("σ_i (eV/Å)")
    ax.set_ylabel("atoms × frames")

    ax = axes[0, 2]
    markers = "os^vD<>"
    seen = set()
    for j, (frame, step, s) in enumerate(worst):
        idx = np.arange(len(s))
        if elements is None:
            ax.plot(idx, s, markers[j % len(markers)], ms=3, label=f"frame {frame} (step {step})")
            continue
        el = np.asarray(elements)
        for k, e in enumerate(sorted(set(el))):
            sel = el == e
            lab = e if e not in seen else None
            seen.add(e)
            ax.plot(idx[sel], s[sel], markers[j % len(markers)], ms=3, color=_element_colour(e, k), label=lab)
        ax.plot([], [], markers[j % len(markers)], color="0.3", ms=3, label=f"frame {frame} (step {step})")
    ax.set_xlabel("atom index")
    ax.set_ylabel("σ_i (eV/Å)")
    ax.set_title("worst frames", fontsize=8)
    if worst:
        ax.legend(fontsize=6)

    if rot:
        ax = axes[0, 3]
        ax.plot(x, st["rotational"], lw=0.9, label="rotational spread")
        ax.plot(x, st["committee_force_rms"], lw=0.9, label="committee spread")
        ax.set_xlabel(xl)
        ax.set_ylabel("force spread, RMS per component (eV/Å)")
        ax.set_yscale("log")
        ax2 = ax.twinx()
        ax2.plot(x, st["ratio"], "k--", lw=0.8)
        ax2.set_ylabel("ratio rotational / committee (dashed)")
        ax.legend(fontsize=7)
    return fig
