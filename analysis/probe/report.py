"""The probe report: markdown with tables, PNG plots and one verdict per section, every number
taken from the probe's own results (``probe.json``). The liquid comparisons come from
:func:`mlip_server.analysis.statistics.welch_compare`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from mlip_server.analysis import output
from mlip_server.analysis.ipi_files import read_properties
from mlip_server.analysis.output import read_table
from mlip_server.analysis.run_folder import find_run_files

__all__ = [
    "verdict_convergence",
    "verdict_cost",
    "verdict_molecule",
    "verdict_liquid",
    "verdict_ice",
    "verdict_committee",
    "plot_convergence",
    "plot_molecule",
    "plot_liquid",
    "plot_ice",
    "plot_committee",
    "write_markdown",
]


def _fmt(x, digits=3):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}g}"


def _pm(value, err, digits=3):
    return f"{_fmt(value, digits)} ± {_fmt(err, 2)}"


# -------------------------------------------------------------------- verdicts
def verdict_convergence(conv) -> str:
    g = conv["grids"]
    raw = g["none"]["force_mae_meV_A"]
    best = min((k for k in g if k != "none"), key=lambda k: g[k]["force_mae_meV_A"], default=None)
    text = (
        f"The raw model's forces differ from the `{conv['reference_grid']}` average by {_fmt(raw)} meV/Å "
        f"(MAE) and its energies by {_fmt(g['none']['energy_mae_meV_per_atom'])} meV/atom."
    )
    if best:
        text += (
            f" The closest grid, `{best}`, is within {_fmt(g[best]['force_mae_meV_A'])} meV/Å "
            f"({_fmt(raw / max(g[best]['force_mae_meV_A'], 1e-30))}× smaller)."
        )
    if conv["has_labels"]:
        err = g["none"]["label_force_rmse_meV_A"]
        ratio = g["none"]["force_rmse_meV_A"] / err
        text += (
            f" Against the reference labels the raw model's force RMSE is {_fmt(err)} meV/Å: "
            f"the symmetry breaking is {_fmt(100 * ratio, 2)} % of the model error"
            + (", i.e. negligible." if ratio < 0.1 else ", i.e. not negligible.")
        )
    return text


def verdict_cost(cost) -> str:
    rel = cost["relative_to_raw"]
    parts = [f"`{k}` {_fmt(v)}×" for k, v in rel.items() if k != "none"]
    text = (
        f"Cost per evaluation relative to the raw model ({cost['n_atoms']} atoms): " + ", ".join(parts) + "."
    )
    for grid, per_n in cost["mts_cost_per_step"].items():
        if grid == "2i":
            text += (
                " With MTS the `2i` correction every 10 inner steps costs "
                f"{_fmt(per_n['10'])}× a raw step in model time (every 20: {_fmt(per_n['20'])}×)."
            )
    return text


def verdict_molecule(mol) -> str:
    raw, avg = mol["raw"], mol["2i"]
    text = (
        f"Spurious torque on the gas-phase molecule: raw {_fmt(raw['torque_rms_eV'] * 1e3)} meV, "
        f"`2i` {_fmt(avg['torque_rms_eV'] * 1e3)} meV (RMS over the run). "
    )
    text += (
        f"Angular-momentum drift (norm of dL/dt): raw {_fmt(raw['L_drift_norm_hbar_per_ps'])} ħ/ps, "
        f"`2i` {_fmt(avg['L_drift_norm_hbar_per_ps'])} ħ/ps; energy drift raw "
        f"{_pm(raw['drift_meV_per_ps'], raw['drift_err'])} vs `2i` "
        f"{_pm(avg['drift_meV_per_ps'], avg['drift_err'])}"
        " meV/ps. "
    )
    if avg["torque_rms_eV"] < 0.1 * raw["torque_rms_eV"]:
        text += "Averaging removes the torque (>10× smaller); what remains is the grid's residual error."
    else:
        text += "The torque is not reduced by 10× with averaging: check the grid convergence above."
    return text


def verdict_liquid(liq) -> str:
    lines = []
    for obs in liq["comparisons"]:
        for other, c in obs["vs_raw"].items():
            if c["err"] is None:
                why = (
                    "C(t) does not decay to zero within a block"
                    if obs["label"].startswith("τ")
                    else "missing in a run's analysis"
                )
                lines.append(f"{obs['label']}: not compared: no block error at this length ({why})")
                break
            state = "significant" if c["significant"] else "below statistical error"
            lines.append(
                f"{obs['label']}: {other} − raw = {_pm(c['delta'], c['err'])} ({state}, "
                f"t = {_fmt(c['t'], 2)}, {_fmt(c['dof'], 2)} dof)"
            )
    n_sig = sum(1 for o in liq["comparisons"] for c in o["vs_raw"].values() if c.get("significant"))
    n_cmp = sum(
        1 for o in liq["comparisons"] for c in o["vs_raw"].values() if c.get("significant") is not None
    )
    head = f"{liq['length_ps']:.3g} ps per run ({liq['n_molecules']} molecules): " + (
        "no observable differs from the raw model at 95 % confidence (Welch's t) — the symmetry "
        "breaking is below statistical error at this length."
        if n_sig == 0
        else f"{n_sig} of {n_cmp} differences are significant at 95 % (Welch's t on {liq['n_blocks']} blocks "
        f"per run; expect about {0.05 * n_cmp:.1g} by chance)."
    )
    return head + "\n\n" + "\n".join(f"- {l}" for l in lines)


def verdict_ice(ice) -> str:
    if "rel_delta_max_meV" not in ice:
        return "Not enough ice cells were evaluated with both the raw and the averaged model."
    text = (
        f"Over {ice['n_compared']} cells the relative energies spread by {_fmt(ice['rel_spread_meV'])} "
        f"meV/molecule (std); averaging (`{ice['grid']}`) changes them by at most "
        f"{_fmt(ice['rel_delta_max_meV'])} meV/molecule (RMS {_fmt(ice['rel_delta_rms_meV'])}). "
    )
    text += (
        "The energy ordering of the cells changes."
        if ice["ordering_changed"]
        else "The energy ordering of the cells is unchanged."
    )
    return text


def verdict_committee(com) -> str:
    """Section 6: the rotational spread of the probed model against the committee's spread."""
    from mlip_server.analysis.uncertainty import verdict

    a = com["all"]
    ratios = [f["ratio"] for f in com["frames"] if math.isfinite(f["ratio"])]
    text = (
        f"Over {len(com['frames'])} structures ({a['n_atoms']} atoms) the probed model's rotational force "
        f"spread over `{com['grid']}` is {_fmt(a['rotational_rms_eV_A'] * 1e3)} meV/Å (RMS per component), "
        f"the committee's spread of {com['n_members']} members {_fmt(a['committee_rms_eV_A'] * 1e3)} meV/Å: "
        f"ratio {_fmt(a['ratio'])}"
    )
    if ratios:
        text += f" (per structure {_fmt(min(ratios))} to {_fmt(max(ratios))})"
    text += f", so {verdict(a['ratio'])}."
    return text


# -------------------------------------------------------------------- plots
def plot_convergence(conv, path):
    fig, axes = output.new_figure(1, 2, size=(4.4, 3.4))
    grids = list(conv["grids"])
    x = np.arange(len(grids))
    for ax, key, label in (
        (axes[0, 0], "energy_mae_meV_per_atom", "energy MAE (meV/atom)"),
        (axes[0, 1], "force_mae_meV_A", "force MAE (meV/Å)"),
    ):
        y = [max(conv["grids"][g][key], 1e-12) for g in grids]
        ax.semilogy(x, y, "o-")
        ax.set_xticks(x, grids)
        ax.set_xlabel(f"grid (vs {conv['reference_grid']})")
        ax.set_ylabel(label)
    output.save_figure(fig, path)


def plot_molecule(runs, path):
    fig, axes = output.new_figure(1, 2, size=(4.6, 3.4))
    for name, d in runs.items():
        am = read_table(Path(d["analysis"]) / "symmetry_angular_momentum.dat")
        L = np.sqrt(am["Lx_hbar"] ** 2 + am["Ly_hbar"] ** 2 + am["Lz_hbar"] ** 2)
        axes[0, 0].plot(am["t_ps"], L, lw=0.8, label=name)
        props = read_properties(find_run_files(str(d["dir"])).require("properties"))  # time ps, conserved eV
        axes[0, 1].plot(props["time"], 1e3 * (props["conserved"] - props["conserved"][0]), lw=0.8, label=name)
    axes[0, 0].set_xlabel("t (ps)")
    axes[0, 0].set_ylabel("|L| (ħ)")
    axes[0, 1].set_xlabel("t (ps)")
    axes[0, 1].set_ylabel("conserved − initial (meV)")
    axes[0, 0].legend(fontsize=8)
    output.save_figure(fig, path)


def plot_liquid(runs, path):
    fig, axes = output.new_figure(2, 3, size=(4.2, 3.2))
    panels = [
        ("rdf.dat", "r_A", "g_OO", "r (Å)", "g_OO(r)"),
        ("dipole_correlation.dat", "r_A", "c_L", "r_OO (Å)", "c_L(r)"),
        ("dipole_correlation.dat", "r_A", "c_T", "r_OO (Å)", "c_T(r)"),
        ("msd.dat", "t_ps", "msd_A2", "t (ps)", "MSD O (Å²)"),
        ("dipole_acf.dat", "t_ps", "C1", "t (ps)", "C1(t)"),
    ]
    for ax, (table, xk, yk, xl, yl) in zip(axes.ravel(), panels):
        for name, d in runs.items():
            f = Path(d["analysis"]) / table
            if not f.exists():
                continue
            t = read_table(f)
            err = t.get(f"{yk}_err", t.get(f"{yk.split('_')[0]}_A2_err"))
            output.band(ax, t[xk], t[yk], err if err is not None else np.zeros_like(t[yk]), label=name)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
    ax = axes[1, 2]
    for name, d in runs.items():
        o = d["summary"].get("orientation")
        if o:
            n = len(o["P_cos"])
            c = -1 + (np.arange(n) + 0.5) * 2 / n
            output.band(ax, c, np.array(o["P_cos"]), np.array(o["P_cos_err"]), label=name)
    ax.set_xlabel("cos θ (dipole vs z)")
    ax.set_ylabel("P(cos θ)")
    axes[0, 0].legend(fontsize=7)
    output.save_figure(fig, path)


def plot_ice(ice, path):
    cells = [c for c in ice["cells"] if "rel_raw_meV" in c]
    fig, axes = output.new_figure(1, 1, size=(4.4, 3.6))
    ax = axes[0, 0]
    x = [c["rel_raw_meV"] for c in cells]
    y = [c["rel_avg_meV"] for c in cells]
    ax.plot(x, y, "o")
    lo, hi = min(x + y) - 0.5, max(x + y) + 0.5
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel("relative energy, raw (meV/H₂O)")
    ax.set_ylabel(f"relative energy, {ice['grid']} (meV/H₂O)")
    output.save_figure(fig, path)


def plot_committee(com, path):
    """Rotational spread against committee spread per structure (eV/Å → meV/Å, log-log)."""
    fig, axes = output.new_figure(1, 1, size=(4.4, 3.6))
    ax = axes[0, 0]
    x = np.array([f["committee_rms_eV_A"] for f in com["frames"]]) * 1e3
    y = np.array([f["rotational_rms_eV_A"] for f in com["frames"]]) * 1e3
    ax.loglog(x, y, "o")
    pos = np.concatenate([x[x > 0], y[y > 0]])
    if pos.size:
        lo, hi = pos.min() / 2, pos.max() * 2
        for k, style in ((1.0, "k--"), (0.1, "k:")):
            ax.plot([lo, hi], [k * lo, k * hi], style, lw=0.8, label=f"ratio {k:g}")
        ax.legend(fontsize=7)
    ax.set_xlabel("committee force spread (meV/Å)")
    ax.set_ylabel(f"rotational force spread, {com['grid']} (meV/Å)")
    output.save_figure(fig, path)


# -------------------------------------------------------------------- markdown
def write_markdown(results, path: Path, figures: Path):
    rel = lambda name: f"{figures.name}/{name}"  # noqa: E731
    r = results
    md = [
        f"# Symmetry probe: `{r['model']}`",
        "",
        f"`mlip-probe --level {r['level']}` on {r['machine']['cpu']} ({r['machine']['cores']} cores, "
        f"torch {r['machine']['torch']}), {r['machine']['date']}; total {r['wall_s'] / 60:.1f} min. "
        "Every number below was measured by this run; the raw data are in "
        f"`{figures.name}/probe.json`.",
        "",
    ]
    conv = r["convergence"]
    md += [
        "## 1. Error convergence of rotational averaging",
        "",
        f"Test set: {conv['description']} ({conv['n_frames']} structures, {sum(conv['n_atoms'])} atoms). "
        f"Differences against the `{conv['reference_grid']}` average (float64).",
        "",
        "| grid | energy MAE (meV/structure) | energy MAE (meV/atom) | force "
        "MAE (meV/Å) | force RMSE (meV/Å) |"
        + (
            " force RMSE vs labels (meV/Å) | energy RMSE vs labels (meV/atom) |" if conv["has_labels"] else ""
        ),
        "|---|---|---|---|---|" + ("---|---|" if conv["has_labels"] else ""),
    ]
    for g, row in conv["grids"].items():
        line = (
            f"| `{g}` | {_fmt(row['energy_mae_meV'])} | {_fmt(row['energy_mae_meV_per_atom'])} | "
            f"{_fmt(row['force_mae_meV_A'])} | {_fmt(row['force_rmse_meV_A'])} |"
        )
        if conv["has_labels"]:
            line += (
                f" {_fmt(row['label_force_rmse_meV_A'])} | {_fmt(row['label_energy_rmse_meV_per_atom'])} |"
            )
        md.append(line)
    md += [
        "",
        f"![convergence]({rel('convergence.png')})",
        "",
        f"**Verdict.** {r['verdicts']['convergence']}",
        "",
    ]
    cost = r["cost"]
    md += [
        "## 2. Cost",
        "",
        f"One evaluation of the {cost['n_atoms']}-atom liquid frame, float32, "
        f"{cost['threads']} threads, best of {cost['repeats']} or more (cheap grids: about 1 s of repeats):",
        "",
        "| grid | seconds | × raw | MTS cost per inner step, n = 5 / 10 / 20 |",
        "|---|---|---|---|",
    ]
    for g, t in cost["seconds"].items():
        m = cost["mts_cost_per_step"].get(g)
        mts = " / ".join(_fmt(m[k]) for k in ("5", "10", "20")) if m else "—"
        md.append(f"| `{g}` | {_fmt(t)} | {_fmt(cost['relative_to_raw'][g])} | {mts} |")
    liq = r["liquid"]
    md += [
        "",
        "Measured in the liquid runs below (wall time per 0.5 fs inner step, i-PI included; the three "
        "runs shared the machine): "
        + ", ".join(f"{k} {_fmt(v)} ms" for k, v in liq["wall_ms_per_step"].items())
        + ".",
        "",
        f"**Verdict.** {r['verdicts']['cost']}",
        "",
    ]
    mol = r["molecule"]
    md += [
        "## 3. Gas-phase molecule, NVE",
        "",
        f"{mol['length_ps']:.3g} ps of 0.5 fs steps from the same start, raw and `2i`.",
        "",
        "| run | torque RMS (meV) | norm of dL/dt (ħ/ps) | mean norm of L (ħ) | energy drift (meV/ps) |",
        "|---|---|---|---|---|",
    ]
    for name in ("raw", "2i"):
        m = mol[name]
        md.append(
            f"| {name} | {_fmt(m['torque_rms_eV'] * 1e3)} | {_fmt(m['L_drift_norm_hbar_per_ps'])} | "
            f"{_pm(m['L_norm_mean_hbar'], m['L_norm_mean_hbar_err'])} | "
            f"{_pm(m['drift_meV_per_ps'], m['drift_err'])} |"
        )
    md += ["", f"![molecule]({rel('molecule.png')})", "", f"**Verdict.** {r['verdicts']['molecule']}", ""]
    md += [
        "## 4. Bulk liquid, NVT 300 K",
        "",
        f"{liq['n_molecules']} molecules, {liq['length_ps']:.3g} ps per run "
        f"(first {liq['skip_fraction']:.0%} "
        f"dropped), frames every {liq['stride_fs']:g} fs; error bars: block standard errors over "
        f"{liq['n_blocks']} blocks. Runs: raw model; MTS with `{liq['average']}` as the slow force every "
        f"{liq['nmts']} steps; a fresh random rotation per call. Coordination numbers of every run are "
        f"counted within the raw run's first g_OO minimum, {liq.get('first_shell_r_A', float('nan')):.3g} Å.",
        "",
        "| observable | " + " | ".join(liq["runs"]) + " |",
        "|---|" + "---|" * len(liq["runs"]),
    ]
    for obs in liq["comparisons"]:
        md.append(f"| {obs['label']} | " + " | ".join(_pm(v, e) for v, e in obs["values"]) + " |")
    md += ["", f"![liquid]({rel('liquid.png')})", "", f"**Verdict.** {r['verdicts']['liquid']}", ""]
    ice = r.get("ice")
    md += ["## 5. Ice: proton-disordered cells", ""]
    if ice:
        md += [
            f"Single points on the given cells; relative energies with respect to the mean over the cells "
            f"evaluated both ways (cells up to {ice['max_atoms']} atoms averaged).",
            "",
            "| cell | atoms | raw (eV/H₂O) | rel. raw (meV) | rel. avg (meV) | Δ (meV) |",
            "|---|---|---|---|---|---|",
        ]
        for c in ice["cells"]:
            md.append(
                f"| {c['file']} | {c['n_atoms']} | {c['raw_eV_per_molecule']:.5f} | "
                f"{_fmt(c.get('rel_raw_meV'))} | "
                f"{_fmt(c.get('rel_avg_meV'))} | {_fmt(c.get('rel_delta_meV'))} |"
            )
        md += ["", f"![ice]({rel('ice.png')})", "", f"**Verdict.** {r['verdicts']['ice']}", ""]
    else:
        md += ["Skipped: no ice cells given (`--ice-dir`).", ""]
    com = r.get("committee")
    if com:
        md += [
            "## 6. Symmetry breaking vs model uncertainty",
            "",
            f"The section-1 structures evaluated by the probed model over `{com['grid']}` (its rotational "
            f"force spread, `force_spread_rms`) and by a committee of {com['n_members']} members "
            f"({', '.join(f'`{Path(m).name}`' for m in com.get('members', []))}), each averaged over the "
            "same grid, whose spread σ_i = sqrt(Σ_m |F_i^m − F̄_i|² / (M − 1)) measures the model's own "
            "uncertainty. Both spreads are RMS per Cartesian component (meV/Å).",
            "",
            "| structure | rotational | committee | ratio | committee max_i σ_i | committee σ_E (meV) |",
            "|---|---|---|---|---|---|",
        ]
        for f in com["frames"]:
            md.append(
                f"| {f['name']} | {_fmt(f['rotational_rms_eV_A'] * 1e3)} | "
                f"{_fmt(f['committee_rms_eV_A'] * 1e3)} | "
                f"{_fmt(f['ratio'])} | {_fmt(f['committee_max_eV_A'] * 1e3)} | "
                f"{_fmt(f['committee_energy_std_eV'] * 1e3)} |"
            )
        a = com["all"]
        md += [
            f"| all | {_fmt(a['rotational_rms_eV_A'] * 1e3)} | {_fmt(a['committee_rms_eV_A'] * 1e3)} | "
            f"{_fmt(a['ratio'])} | {_fmt(a['committee_max_eV_A'] * 1e3)} | — |",
            "",
            f"The committee mean's own rotational spread over `{com['grid']}`: "
            f"{_fmt(a['committee_rotational_rms_eV_A'] * 1e3)} meV/Å.",
            "",
            f"![committee]({rel('committee.png')})",
            "",
            f"**Verdict.** {r['verdicts']['committee']}",
            "",
        ]
    path.write_text("\n".join(md) + "\n")
