"""Issue 18 diagnosis: learning curves of the PET-like model on a fixed CPU budget per point.

    python -m mlip_server.training.diagnose --list
    python -m mlip_server.training.diagnose [--only base,d96,...] [--budget 300] \\
        [--out models/validation/v2-diagnosis]
    python -m mlip_server.training.diagnose --report          # the table of every finished point (markdown)

Every point trains a fresh model (or fine-tunes the shipped checkpoint, ``finetune-*``) with
:mod:`mlip_server.training.train`'s own pieces (data preparation, epoch plan with rotation + inversion
augmentation, loss, validation) for a fixed budget of **process CPU seconds** (``--budget``, times
the point's ``budget_x``), with one torch thread: CPU time, not wall time, so that points are
comparable on a shared machine (other processes, SIGSTOP pauses). The learning rate is warmed up
over ``warmup_steps`` and then follows the point's schedule over the *CPU-time fraction* spent
(cosine to ``min_lr_ratio`` · lr, or constant), so that every point ends its schedule at its budget.

Fixed evaluation sets (never trained on), from ``DATA/val.extxyz`` by ``source``:
``classical`` (liquid-* runs: the in-distribution classical liquid), ``distorted`` (perturbed,
close-contacts, explore-*), and ``train32`` (the first 32 training frames of the point: the training
error, for the generalisation gap). Each is evaluated at ``--evals`` evenly spaced CPU-time fractions
(the evaluation's own CPU time is not counted). One JSON per point in ``--out`` (``NAME.json``);
finished points are skipped, so the command resumes after an interruption (a point is ~5 minutes).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mlip_server.paths import checkout_root

from .data import build_graphs, read_frames
from .pet import build, count_parameters
from .train import collate, epoch_plan, loss_terms, merge_config, predict, prepare_data, validate

__all__ = ["BASE", "POINTS", "run_point", "report", "main"]

CLASSICAL = ("liquid",)
DISTORTED = ("perturbed", "close-contacts", "explore")

BASE = {
    "seed": 0,
    "dtype": "float32",
    "data": {"rotate": True, "invert": True, "sources": list(CLASSICAL)},
    "model": {
        "species": [1, 8],
        "cutoff": 4.0,
        "cutoff_width": 0.3,
        "d_model": 64,
        "n_heads": 4,
        "d_ffn": 128,
        "n_layers": 2,
        "n_transformer_layers": 1,
        "length_scale": 0.5,
    },
    "optim": {"lr": 6e-4, "schedule": "cosine", "warmup_steps": 20, "min_lr_ratio": 0.01, "grad_clip": 10.0},
    "loss": {"energy_weight": 0.01, "force_weight": 1.0},
    "batch_size": 4,
    "val_batch_size": 8,
}
"""The reference point: the shipped architecture (d_model 64, 2 layers), classical frames only,
AdamW lr 6e-4 with cosine decay, batch 4, loss 0.01 L_E/σ_E² + L_F/σ_F² (the shipped weights)."""

PHASE3 = "models/checkpoints/water-pet-phase3/checkpoint.pt"

POINTS = {
    "base": {},
    "frames-30": {"data": {"max_frames": 30}},
    "frames-100": {"data": {"max_frames": 100}},
    "budget-x3": {"budget_x": 3},
    "d48": {"model": {"d_model": 48, "d_ffn": 96}},
    "d96": {"model": {"d_model": 96, "d_ffn": 192}},
    "layers3": {"model": {"n_layers": 3}},
    "layers1": {"model": {"n_layers": 1}},
    "distorted-w1": {"data": {"sources": list(CLASSICAL + DISTORTED)}},
    "distorted-w0.1": {
        "data": {"sources": list(CLASSICAL + DISTORTED), "source_weights": {d: 0.1 for d in DISTORTED}}
    },
    "ew0.1": {"loss": {"energy_weight": 0.1}},
    "ew1": {"loss": {"energy_weight": 1.0}},
    "lr-constant": {"optim": {"schedule": "constant"}},
    "lr2e-3": {"optim": {"lr": 2e-3}},
    "lr2e-4": {"optim": {"lr": 2e-4}},
    "batch1": {"batch_size": 1, "optim": {"lr": 3e-4}},
    "atomic-w1": {"loss": {"atomic_energy_weight": 1.0}},
    "atomic-w0.1": {"loss": {"atomic_energy_weight": 0.1}},
    "finetune-phase3": {"init_from": PHASE3, "optim": {"lr": 2e-4, "warmup_steps": 5}},
    "ft-atomic-w1": {
        "init_from": PHASE3,
        "optim": {"lr": 2e-4, "warmup_steps": 5},
        "loss": {"atomic_energy_weight": 1.0},
    },
    "ft-ew1": {"init_from": PHASE3, "optim": {"lr": 2e-4, "warmup_steps": 5}, "loss": {"energy_weight": 1.0}},
    "ft-distorted-w1": {
        "init_from": PHASE3,
        "optim": {"lr": 2e-4, "warmup_steps": 5},
        "data": {"sources": list(CLASSICAL + DISTORTED)},
    },
}
"""Name → overrides of :data:`BASE` (``budget_x``: a multiple of the CPU budget)."""


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "source_weights":
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def point_config(name: str, data_dir: Path) -> tuple[dict, float]:
    """(the :mod:`mlip_server.training.train` config of point ``name``, its budget multiple)."""
    over = copy.deepcopy(POINTS[name])
    budget_x = float(over.pop("budget_x", 1))
    user = _merge(BASE, over)
    user["data"]["train"] = str(data_dir / "train.extxyz")
    user["data"]["val"] = str(data_dir / "val.extxyz")
    return merge_config(user), budget_x


def _eval_sets(config: dict, stats: dict, model, train_set) -> dict:
    """The fixed evaluation graphs (baseline subtracted as in training)."""
    frames = read_frames(config["data"]["val"])
    species = model.species
    mu = torch.tensor(stats["baseline"], dtype=torch.float64)
    lookup = {z: k for k, z in enumerate(species)}
    atomic = float(config["loss"]["atomic_energy_weight"]) > 0
    sets = {}
    for name, prefixes in (("classical", CLASSICAL), ("distorted", DISTORTED)):
        chosen = [f for f in frames if f.source.startswith(prefixes)]
        if not chosen:
            continue
        graphs = build_graphs(chosen, model.cutoff)
        for g in graphs:
            kinds = torch.tensor([lookup[int(z)] for z in g.numbers.tolist()])
            g.energy = g.energy - mu[kinds].sum()
            if atomic:
                g.atomic_energies = g.atomic_energies - mu[kinds]
        sets[name] = graphs
    sets["train32"] = train_set[:32]
    return sets


def _lr(config: dict, step: int, fraction: float) -> float:
    opt = config["optim"]
    base = float(opt["lr"])
    if step < int(opt["warmup_steps"]):
        return base * (step + 1) / int(opt["warmup_steps"])
    if opt["schedule"] == "constant":
        return base
    r = float(opt["min_lr_ratio"])
    return base * (r + (1 - r) * 0.5 * (1 + math.cos(math.pi * min(fraction, 1.0))))


def run_point(name: str, data_dir: Path, budget_s: float, n_evals: int) -> dict:
    """Trains point ``name`` for its CPU budget; returns its record (curve, final metrics, timings)."""
    config, budget_x = point_config(name, data_dir)
    budget = budget_s * budget_x
    seed = int(config["seed"])
    torch.manual_seed(seed)
    np.random.seed(seed)
    dtype = torch.float32 if config["dtype"] == "float32" else torch.float64
    model = build(config["model"])
    train_set, _, stats = prepare_data(config, model, torch.device("cpu"))
    with torch.no_grad():
        model.baseline.copy_(torch.tensor(stats["baseline"]))
        model.energy_scale.fill_(stats["sigma_f"])
        model.bond_norm.fill_(1.0 / stats["mean_neighbours"])
    if config["init_from"]:
        start = torch.load(config["init_from"], map_location="cpu", weights_only=False)
        model.load_state_dict(start["best_model"])
        with torch.no_grad():
            model.baseline.copy_(torch.tensor(stats["baseline"]))
    model.to(dtype=dtype)
    sets = _eval_sets(config, stats, model, train_set)
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(config["optim"]["lr"]), weight_decay=0.0)
    weights = config["loss"]
    record = {
        "name": name,
        "overrides": POINTS[name],
        "budget_cpu_s": budget,
        "n_parameters": count_parameters(model),
        "n_train": stats["n_train"],
        "eval_frames": {k: len(v) for k, v in sets.items()},
        "sigma_f_ev_per_a": stats["sigma_f"],
        "sigma_e_mev_per_atom": 1000 * stats["sigma_e"],
        "curve": [],
    }
    marks = [budget * (k + 1) / n_evals for k in range(n_evals)]

    def evaluate(cpu, step, frames_seen):
        point = {
            "cpu_s": cpu,
            "step": step,
            "frames_seen": frames_seen,
            "epochs": frames_seen / len(train_set),
        }
        for set_name, graphs in sets.items():
            m = validate(model, graphs, config, stats, dtype)
            point[set_name] = {k: v for k, v in m.items() if k != "loss"}
        record["curve"].append(point)
        c = point.get("classical", {})
        print(
            f"{name}: cpu {cpu:.0f}/{budget:.0f} s, step {step}, epochs {point['epochs']:.2f}: "
            "classical F RMSE "
            f"{c.get('force_rmse_mev_per_a', float('nan')):.1f} meV/Å, E MAE "
            f"{c.get('energy_mae_mev_per_atom', float('nan')):.2f} meV/atom; train32 F RMSE "
            f"{point['train32']['force_rmse_mev_per_a']:.1f}",
            file=sys.stderr,
            flush=True,
        )

    model.train()
    cpu_used, step, frames_seen, epoch = 0.0, 0, 0, 0
    t_wall = time.time()
    evaluate(0.0, 0, 0)
    while cpu_used < budget:
        batches, rotations = epoch_plan(
            len(train_set),
            int(config["batch_size"]),
            seed,
            epoch,
            config["data"]["rotate"],
            config["data"]["invert"],
        )
        for idx in batches:
            t0 = time.process_time()
            for group in optimizer.param_groups:
                group["lr"] = _lr(config, step, cpu_used / budget)
            graphs = [train_set[k] for k in idx.tolist()]
            batch = collate(graphs, None if rotations is None else rotations[idx], dtype)
            energies, forces, atomic = predict(model, batch, create_graph=True, return_atomic=True)
            loss, _, _ = loss_terms(energies, forces, batch, stats, weights, atomic)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(config["optim"]["grad_clip"]))
            optimizer.step()
            cpu_used += time.process_time() - t0
            step += 1
            frames_seen += len(idx)
            while marks and cpu_used >= marks[0]:
                marks.pop(0)
                evaluate(cpu_used, step, frames_seen)
            if cpu_used >= budget:
                break
        epoch += 1
    record["steps"] = step
    record["epochs"] = frames_seen / len(train_set)
    record["cpu_s_per_frame"] = cpu_used / max(frames_seen, 1)
    record["wall_s"] = time.time() - t_wall
    record["final"] = record["curve"][-1]
    return record


def report(out: Path) -> str:
    """A markdown table of the finished points in ``out``."""
    rows = [
        "| point | params | train frames | steps | epochs | CPU s/frame | classical F RMSE meV/Å | "
        "classical E MAE meV/atom | train32 F RMSE | distorted F RMSE | atomic MAE meV |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in POINTS:
        path = out / f"{name}.json"
        if not path.is_file():
            continue
        r = json.loads(path.read_text())
        f = r["final"]
        c, t, d = f.get("classical", {}), f.get("train32", {}), f.get("distorted", {})
        rows.append(
            f"| {name} | {r['n_parameters']} | {r['n_train']} | {r['steps']} | {r['epochs']:.1f} | "
            f"{r['cpu_s_per_frame']:.2f} | {c.get('force_rmse_mev_per_a', float('nan')):.1f} | "
            f"{c.get('energy_mae_mev_per_atom', float('nan')):.2f} | "
            f"{t.get('force_rmse_mev_per_a', float('nan')):.1f} | "
            f"{d.get('force_rmse_mev_per_a', float('nan')):.1f} | "
            f"{c.get('atomic_energy_mae_mev', float('nan')):.1f} |"
        )
    return "\n".join(rows)


def main(argv=None) -> int:
    root = checkout_root()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(root / "training" / "data"))
    p.add_argument("--out", default=str(root / "models" / "validation" / "v2-diagnosis"))
    p.add_argument("--budget", type=float, default=300.0, help="process CPU seconds per point (× budget_x)")
    p.add_argument("--evals", type=int, default=6, help="evaluations per point, evenly spaced in CPU time")
    p.add_argument("--only", help="comma-separated point names (default: all)")
    p.add_argument("--list", action="store_true", help="list the points and exit")
    p.add_argument("--report", action="store_true", help="print the table of finished points and exit")
    p.add_argument("--force", action="store_true", help="re-run finished points")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.list:
        for name, over in POINTS.items():
            print(f"{name}: {json.dumps(over)}")
        return 0
    if args.report:
        print(report(out))
        return 0
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    names = args.only.split(",") if args.only else list(POINTS)
    unknown = [n for n in names if n not in POINTS]
    if unknown:
        print(f"error: unknown point(s) {unknown}: see --list", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = out / f"{name}.json"
        if path.is_file() and not args.force:
            print(f"{name}: done ({path})", file=sys.stderr)
            continue
        from mlip_server import machine

        record = run_point(name, Path(args.data), args.budget, args.evals)
        record["machine"] = machine.describe()
        record["torch_threads"] = torch.get_num_threads()
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
