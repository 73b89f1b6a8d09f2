"""Training the PET-like model on energies and forces; export to TorchScript.

Usage::

    python -m mlip_server.training.train CONFIG.yaml [--resume] [--device cuda]
    python -m mlip_server.training.train --export CHECKPOINT OUT.pt   (OUT.pt2: compiled, --device)

The YAML config (see ``training/configs/water-pet.yaml``; every key has a default in
:data:`DEFAULTS`)::

    seed, output_dir, device, dtype (float32|float64), matmul_precision
    data:  train, val (paths) or val_fraction; rotate, invert (augmentation);
           sources (list of source-name prefixes to keep, null: all), max_frames (a seeded random
           subset of the training frames, null: all), source_weights ({prefix: weight}, per-frame
           loss weights by ``atoms.info["source"]``, first matching prefix, default 1)
    model: keyword arguments of :class:`mlip_server.training.pet.PET`
    optim: lr, weight_decay, schedule (cosine|step|constant), warmup_steps,
           min_lr_ratio, step_epochs, step_gamma, grad_clip
    loss:  energy_weight, force_weight, symmetry_weight, atomic_energy_weight
    batch_size, val_batch_size, epochs, max_minutes
    init_from: a checkpoint whose best weights start this run (fine-tuning; fresh optimiser)

Loss per batch (as the paper): w_E · MSE(E/N_atoms) / σ_E² + w_F · MSE(F) / σ_F², with
σ_E the standard deviation of the per-atom energy (after the composition baseline) and
σ_F the RMS force component of the training set. With ``data.source_weights`` each frame's squared
errors are multiplied by its weight (all weights 1: the plain loss).

With ``loss.atomic_energy_weight`` w_A > 0 (default 0: off) the loss gains
w_A · MSE(ε_i − ε_i^T) / σ_A²: the model's per-atom energies against the teacher's
(``teacher_atomic_energy`` column, :mod:`mlip_server.training.atomic_energies`; every training and validation
frame needs it), both without the composition baseline, which is then the per-species mean of the
teacher's atomic energies (instead of the least-squares fit of totals; the same totals for a fixed
stoichiometry); σ_A is the standard deviation of the baseline-subtracted teacher atomic energies.
N labels per frame for one extra sum, no second derivative; validation adds their MAE (meV/atom).

With ``loss.symmetry_weight`` w_S > 0 every structure of a batch is seen twice, under two independent
random rotations R₁, R₂ (both copies enter the loss above), and the loss gains
w_S · [w_E · MSE((E₁ − E₂)/N_atoms) / σ_E² + w_F · MSE(R₁ᵀF₁ − R₂ᵀF₂) / σ_F²]: the spread of the
model's predictions over orientations, i.e. its rotational symmetry breaking, penalised directly
(the architecture stays unconstrained; augmentation alone penalises the same spread only
through the label error, weakly). Each step then costs twice as much.

The composition baseline (eV per atom
of each species) is fitted by least squares on the training set; the model's output
scale is set to σ_F × 1 Å and its bond-energy normalisation to 1 / (mean number of
neighbours).

Every epoch: validation (energy MAE per atom, meV; force MAE and RMSE, meV/Å) on the
un-rotated validation frames, ``output_dir/checkpoint.pt`` (model, best model, optimiser,
scheduler, position in the epoch, RNG states, best validation loss, history) and
``output_dir/log.jsonl``. SIGTERM/SIGINT finish the current batch, write the checkpoint
and exit with 128 + signal; ``--resume`` continues from the exact batch (the order of
the frames and their rotations in epoch k depend only on ``seed`` and k). At the end the
best model (lowest validation loss) is exported to ``output_dir/model.pt``.

With ``max_minutes`` the run stops when the budget (summed over resumes) is spent; after
the first epoch the learning-rate schedule is fitted to the number of epochs that fit.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mlip_server.core.errors import ModelError

from .checkpoints import (
    StopRequest,
    cpu_state,
    export,
    model_from_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .data import (
    build_graphs,
    collate,
    fit_baseline,
    forces_from_edge_gradient,
    random_rotations,
    read_frames,
)
from .pet import PET, build, count_parameters

__all__ = [
    "train",
    "main",
    "load_config",
    "merge_config",
    "prepare_data",
    "predict",
    "validate",
    "paired_batch",
    "source_weight",
    "atomic_baseline",
    "symmetry_terms",
    "symmetry_loss",
    "loss_terms",
    "save_checkpoint",
    "model_from_checkpoint",
    "export",
    "WarmupSchedule",
    "StopRequest",
    "DEFAULTS",
    "CHECKPOINT",
    "EXPORT",
]

DEFAULTS = {
    "seed": 0,
    "output_dir": "runs/pet",
    "device": "cpu",
    "dtype": "float32",
    "matmul_precision": "highest",  # "high" allows TF32 on NVIDIA GPUs
    "data": {
        "train": None,
        "val": None,
        "val_fraction": 0.1,
        "rotate": True,
        "invert": True,
        "sources": None,
        "max_frames": None,
        "source_weights": {},
    },
    "model": {},
    "optim": {
        "lr": 1e-3,
        "weight_decay": 0.0,
        "schedule": "cosine",
        "warmup_steps": 100,
        "min_lr_ratio": 0.01,
        "step_epochs": 100,
        "step_gamma": 0.5,
        "grad_clip": 10.0,
    },
    "loss": {"energy_weight": 0.01, "force_weight": 1.0, "symmetry_weight": 0.0, "atomic_energy_weight": 0.0},
    "batch_size": 8,
    "val_batch_size": 16,
    "epochs": 100,
    "max_minutes": None,
    "init_from": None,
}

CHECKPOINT = "checkpoint.pt"
EXPORT = "model.pt"


# -- configuration -------------------------------------------------------------------
def load_config(path) -> dict:
    """The YAML config merged over :data:`DEFAULTS` (unknown keys are an error)."""
    import yaml

    with open(path) as fh:
        user = yaml.safe_load(fh) or {}
    return merge_config(user)


def merge_config(user: dict) -> dict:
    config = copy.deepcopy(DEFAULTS)
    for key, value in user.items():
        if key not in config:
            raise ValueError(f"unknown config key {key!r}: known keys are {sorted(config)}")
        if isinstance(config[key], dict) and key != "model":
            if not isinstance(value, dict):
                raise ValueError(f"config key {key!r} must be a mapping")
            unknown = sorted(set(value) - set(config[key]))
            if unknown:
                raise ValueError(f"unknown key(s) {unknown} under {key!r}: known are {sorted(config[key])}")
            config[key].update(value)
        else:
            config[key] = value
    return config


# -- learning-rate schedule --------------------------------------------------------------
class WarmupSchedule:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``min_lr_ratio``·lr at
    ``total_steps``, or ×``step_gamma`` every ``step_epochs`` epochs, or constant.
    Sets the optimiser's learning rate directly; state = (step, total_steps)."""

    def __init__(
        self,
        optimizer,
        kind: str,
        base_lr: float,
        warmup_steps: int,
        total_steps: int,
        steps_per_epoch: int,
        min_lr_ratio: float,
        step_epochs: int,
        step_gamma: float,
    ):
        if kind not in ("cosine", "step", "constant"):
            raise ValueError(f"unknown schedule {kind!r}: use cosine, step or constant")
        self.optimizer, self.kind, self.base_lr = optimizer, kind, base_lr
        self.warmup_steps, self.total_steps = int(warmup_steps), int(total_steps)
        self.steps_per_epoch, self.min_lr_ratio = int(steps_per_epoch), float(min_lr_ratio)
        self.step_epochs, self.step_gamma = int(step_epochs), float(step_gamma)
        self.step_count = 0
        self._apply()

    def lr(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        if self.kind == "cosine":
            span = max(self.total_steps - self.warmup_steps, 1)
            x = min((step - self.warmup_steps) / span, 1.0)
            return self.base_lr * (
                self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * x))
            )
        if self.kind == "step":
            return self.base_lr * self.step_gamma ** (step // max(self.step_epochs * self.steps_per_epoch, 1))
        return self.base_lr

    def _apply(self):
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr(self.step_count)

    def step(self):
        self.step_count += 1
        self._apply()

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "total_steps": self.total_steps}

    def load_state_dict(self, state: dict):
        self.step_count, self.total_steps = int(state["step_count"]), int(state["total_steps"])
        self._apply()


# -- data -----------------------------------------------------------------------------
def prepare_data(config: dict, model: PET, device: torch.device):
    """Reads, splits and graphs the data; fits the baseline and the loss scales.

    Returns (train graphs, val graphs, stats) with energies minus the composition
    baseline; stats: ``baseline`` (eV/atom per species), ``sigma_e`` (eV/atom), ``sigma_f`` (eV/Å).
    """
    data = config["data"]
    if not data["train"]:
        raise ValueError("config data.train is not set: give the path of an extended-XYZ training set")
    train_frames = read_frames(data["train"])
    if data["val"]:
        val_frames = read_frames(data["val"])
    else:
        order = np.random.default_rng(config["seed"]).permutation(len(train_frames))
        n_val = max(1, int(round(float(data["val_fraction"]) * len(train_frames))))
        if n_val >= len(train_frames):
            raise ValueError(f"val_fraction {data['val_fraction']} leaves no training frames")
        val_frames = [train_frames[k] for k in order[:n_val]]
        train_frames = [train_frames[k] for k in order[n_val:]]
    if data["sources"]:
        prefixes = tuple(str(p) for p in data["sources"])
        train_frames = [f for f in train_frames if f.source.startswith(prefixes)]
        val_frames = [f for f in val_frames if f.source.startswith(prefixes)]
        if not train_frames or not val_frames:
            raise ValueError(f"data.sources {list(prefixes)} leaves no training or no validation frames")
    if data["max_frames"] and int(data["max_frames"]) < len(train_frames):
        keep = np.random.default_rng(config["seed"] + 1).permutation(len(train_frames))[
            : int(data["max_frames"])
        ]
        train_frames = [train_frames[k] for k in sorted(keep)]
    train = build_graphs(train_frames, model.cutoff)
    val = build_graphs(val_frames, model.cutoff)
    for g in train + val:
        g.weight = source_weight(g.source, data["source_weights"])
    atomic = float(config["loss"]["atomic_energy_weight"]) > 0
    lookup = {z: k for k, z in enumerate(model.species)}
    if atomic:
        missing = sum(g.atomic_energies is None for g in train + val)
        if missing:
            raise ValueError(
                f"loss.atomic_energy_weight > 0 but {missing} frames have no teacher_atomic_energy column: "
                "add it with python -m mlip_server.training.atomic_energies FILES"
            )
        mu = atomic_baseline(train, model.species)
    else:
        mu = fit_baseline(train, model.species)
    for g in train + val:
        kinds = torch.tensor([lookup[int(z)] for z in g.numbers.tolist()])
        g.energy = g.energy - torch.from_numpy(mu)[kinds].sum()
        if atomic:
            g.atomic_energies = g.atomic_energies - torch.from_numpy(mu)[kinds]
    n_edges = sum(g.edge_index.shape[1] for g in train)
    mean_neighbours = max(n_edges / sum(g.n_atoms for g in train), 1.0)
    per_atom = np.array([float(g.energy) / g.n_atoms for g in train])
    sigma_e = float(per_atom.std()) if len(train) > 1 else 0.0
    sigma_f = float(torch.sqrt(torch.cat([g.forces.reshape(-1) for g in train]).pow(2).mean()))
    # guard against degenerate sets (one frame, zero forces)
    sigma_e = max(sigma_e, 1e-4)
    sigma_f = max(sigma_f, 1e-3)
    sigma_a = float(torch.cat([g.atomic_energies for g in train]).std()) if atomic else 0.0
    stats = {
        "sigma_a": max(sigma_a, 1e-4) if atomic else 0.0,
        "baseline": mu.tolist(),
        "sigma_e": sigma_e,
        "sigma_f": sigma_f,
        "mean_neighbours": mean_neighbours,
        "n_train": len(train),
        "n_val": len(val),
    }
    return [g.to(device) for g in train], [g.to(device) for g in val], stats


def source_weight(source: str, weights: dict) -> float:
    """Loss weight of a frame from run ``source``: the first prefix of ``weights`` it starts with, else 1."""
    for prefix, weight in (weights or {}).items():
        if source.startswith(str(prefix)):
            return float(weight)
    return 1.0


def atomic_baseline(graphs, species) -> np.ndarray:
    """Per-species mean of the teacher's atomic energies (eV) over ``graphs``."""
    numbers = torch.cat([g.numbers for g in graphs])
    energies = torch.cat([g.atomic_energies for g in graphs])
    mu = np.zeros(len(species))
    for k, z in enumerate(species):
        mask = numbers == int(z)
        mu[k] = float(energies[mask].mean()) if bool(mask.any()) else 0.0
    return mu


def epoch_plan(
    n_train: int, batch_size: int, seed: int, epoch: int, rotate: bool, invert: bool, pairs: bool = False
):
    """Frame order and rotations of one epoch: a function of (seed, epoch) only.

    With ``pairs`` the rotations are [n_train, 2, 3, 3]: a second, independent orientation
    per frame for the symmetry term (the first ones are those drawn without ``pairs``)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n_train, generator=gen)
    if pairs and not rotate:
        raise ValueError("loss.symmetry_weight > 0 needs data.rotate: true (two orientations per frame)")
    rotations = random_rotations(n_train, gen, inversion=invert) if rotate else None
    if rotations is None and invert:
        flip = torch.rand(n_train, generator=gen) < 0.5
        rotations = torch.where(
            flip[:, None, None], -torch.eye(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64)
        )
    if pairs:
        rotations = torch.stack([rotations, random_rotations(n_train, gen, inversion=invert)], dim=1)
    batches = [order[k : k + batch_size] for k in range(0, n_train, batch_size)]
    return batches, rotations


# -- model evaluation -------------------------------------------------------------------
def predict(model: PET, batch, create_graph: bool, return_atomic: bool = False):
    """Energies [B] (eV, without the composition baseline) and forces [N, 3] (eV/Å); with
    ``return_atomic`` also the atomic energies [N] (eV, without the baseline)."""
    atomic = model.atomic_energies(batch.edge_vectors, batch.edge_index, batch.numbers, False)
    energies = torch.zeros(batch.n_structures, dtype=atomic.dtype, device=atomic.device)
    energies = energies.index_add(0, batch.structure_index, atomic)
    (grad,) = torch.autograd.grad(energies.sum(), batch.edge_vectors, create_graph=create_graph)
    forces = forces_from_edge_gradient(grad, batch.edge_index, batch.numbers.shape[0])
    if return_atomic:
        return energies, forces, atomic
    return energies, forces


def loss_terms(energies, forces, batch, stats, weights, atomic=None):
    """(loss, per-atom energy errors [B] eV/atom, force errors [N, 3] eV/Å); the loss of the module
    docstring, with per-frame weights ``batch.weights`` if set and the atomic-energy term if
    ``atomic`` (the model's atomic energies [N]) is given and ``weights["atomic_energy_weight"]`` > 0."""
    dtype = energies.dtype
    e_err = (energies - batch.energies.to(dtype)) / batch.n_atoms.to(dtype)
    f_err = forces - batch.forces.to(dtype)
    w_frame = None if batch.weights is None else batch.weights.to(dtype)
    w_atom = None if w_frame is None else w_frame[batch.structure_index]
    if w_frame is None:
        loss_e = (e_err**2).mean() / stats["sigma_e"] ** 2
        loss_f = (f_err**2).mean() / stats["sigma_f"] ** 2
    else:
        loss_e = (w_frame * e_err**2).mean() / stats["sigma_e"] ** 2
        loss_f = (w_atom[:, None] * f_err**2).mean() / stats["sigma_f"] ** 2
    loss = weights["energy_weight"] * loss_e + weights["force_weight"] * loss_f
    w_a = float(weights.get("atomic_energy_weight", 0.0))
    if w_a > 0 and atomic is not None:
        if batch.atomic_energies is None:
            raise ValueError("loss.atomic_energy_weight > 0 needs teacher atomic energies for every frame")
        a_err = (atomic - batch.atomic_energies.to(dtype)) ** 2
        if w_atom is not None:
            a_err = w_atom * a_err
        loss = loss + w_a * a_err.mean() / stats["sigma_a"] ** 2
    return loss, e_err, f_err


def paired_batch(graphs, rotations, dtype):
    """One batch of 2B structures: ``graphs`` under ``rotations[:, 0]``, then under ``rotations[:, 1]``
    (rotations [B, 2, 3, 3]); returns (batch, the [2B, 3, 3] rotations in batch order)."""
    both = torch.cat([rotations[:, 0], rotations[:, 1]])
    return collate(list(graphs) * 2, both, dtype), both


def symmetry_terms(energies, forces, batch, rotations):
    """Orientation spread of a :func:`paired_batch` prediction: (per-atom energy differences
    (E₁ − E₂)/N [B] in eV/atom, lab-frame force differences R₁ᵀF₁ − R₂ᵀF₂ [N/2, 3] in eV/Å)."""
    half = batch.n_structures // 2
    n_half = int(batch.n_atoms[:half].sum())
    lab = torch.einsum("iba,ib->ia", rotations.to(forces)[batch.structure_index], forces)
    e_diff = (energies[:half] - energies[half:]) / batch.n_atoms[:half].to(energies)
    return e_diff, lab[:n_half] - lab[n_half:]


def symmetry_loss(energies, forces, batch, rotations, stats, weights):
    e_diff, f_diff = symmetry_terms(energies, forces, batch, rotations)
    return (
        weights["energy_weight"] * (e_diff**2).mean() / stats["sigma_e"] ** 2
        + weights["force_weight"] * (f_diff**2).mean() / stats["sigma_f"] ** 2
    )


VALIDATION_SEED = 20240521  # fixed orientations for the validation symmetry metrics: comparable across epochs


def validate(model: PET, graphs, config, stats, dtype) -> dict:
    """Validation metrics: energy MAE per atom (meV/atom), per structure (meV), force
    MAE and RMSE (meV/Å), and the weighted loss (the model-selection criterion), all on the
    un-rotated frames. With ``loss.symmetry_weight`` > 0 also the orientation spread on the
    validation frames under two fixed random rotations each: mean |E₁ − E₂| (meV/structure) and
    mean |R₁ᵀF₁ − R₂ᵀF₂| (meV/Å; for a spread that is Gaussian, √2 × the mean distance of a
    raw prediction from the orientation average, the model card's raw-vs-averaged number)."""
    model.eval()
    bs = int(config["val_batch_size"])
    sums = torch.zeros(5, dtype=torch.float64, device=graphs[0].vectors.device)
    atomic_on = float(config["loss"].get("atomic_energy_weight", 0.0)) > 0
    atomic_sum, n_atoms_total = 0.0, 0
    n_frames, n_comp = 0, 0
    for k in range(0, len(graphs), bs):
        batch = collate(graphs[k : k + bs], None, dtype)
        energies, forces, atomic = predict(model, batch, create_graph=False, return_atomic=True)
        atomic = atomic.detach()
        loss, e_err, f_err = loss_terms(
            energies.detach(), forces.detach(), batch, stats, config["loss"], atomic if atomic_on else None
        )
        if atomic_on:
            atomic_sum += float((atomic.double() - batch.atomic_energies.double()).abs().sum())
            n_atoms_total += int(atomic.shape[0])
        e_err, f_err = e_err.double(), f_err.double()
        sums += torch.stack(
            [
                e_err.abs().sum(),
                (e_err * batch.n_atoms).abs().sum(),
                f_err.abs().sum(),
                (f_err**2).sum(),
                loss.double() * len(e_err),
            ]
        )
        n_frames += len(e_err)
        n_comp += f_err.numel()
    s = sums.tolist()
    metrics = {
        "energy_mae_mev_per_atom": 1000 * s[0] / n_frames,
        "energy_mae_mev": 1000 * s[1] / n_frames,
        "force_mae_mev_per_a": 1000 * s[2] / n_comp,
        "force_rmse_mev_per_a": 1000 * math.sqrt(s[3] / n_comp),
        "loss": s[4] / n_frames,
    }
    if atomic_on:
        metrics["atomic_energy_mae_mev"] = 1000 * atomic_sum / max(n_atoms_total, 1)
    if float(config["loss"]["symmetry_weight"]) > 0:
        gen = torch.Generator().manual_seed(VALIDATION_SEED)
        rotations = torch.stack(
            [random_rotations(len(graphs), gen), random_rotations(len(graphs), gen)], dim=1
        )
        spread = torch.zeros(2, dtype=torch.float64, device=sums.device)
        n_comp = 0
        for k in range(0, len(graphs), bs):
            batch, both = paired_batch(graphs[k : k + bs], rotations[k : k + bs], dtype)
            energies, forces = predict(model, batch, create_graph=False)
            e_diff, f_diff = symmetry_terms(energies.detach(), forces.detach(), batch, both)
            e_diff, f_diff = e_diff.double() * batch.n_atoms[: len(e_diff)], f_diff.double()
            spread += torch.stack([e_diff.abs().sum(), f_diff.abs().sum()])
            n_comp += f_diff.numel()
        metrics.update(
            rotation_energy_mad_mev=1000 * float(spread[0]) / n_frames,
            rotation_force_mad_mev_per_a=1000 * float(spread[1]) / n_comp,
        )
    model.train()
    return metrics


# -- training ---------------------------------------------------------------------------
def train(config: dict, resume: bool = False, on_batch=None) -> dict:
    """Runs (or resumes) training; returns a summary dict.

    ``on_batch(epoch, batch_index)``, if given, is called after every optimiser step
    (tests use it to send themselves a signal at a known point).
    """
    from tqdm import tqdm

    out_dir = Path(config["output_dir"])
    ckpt_path = out_dir / CHECKPOINT
    from mlip_server.formats import parse_device, parse_dtype

    device = parse_device(config["device"])
    dtype = parse_dtype(config["dtype"])
    torch.set_float32_matmul_precision(config["matmul_precision"])
    seed = int(config["seed"])

    checkpoint = None
    if resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}: start without --resume")
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if checkpoint["model_config"] != config["model"]:
            raise ValueError(
                f"--resume: the model section of the config differs from the checkpoint's "
                f"({checkpoint['model_config']}): resume with the same model options"
            )
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)

    model = build(config["model"])
    train_set, val_set, stats = prepare_data(config, model, device)
    with torch.no_grad():
        model.baseline.copy_(torch.tensor(stats["baseline"]))
        model.energy_scale.fill_(stats["sigma_f"])
        model.bond_norm.fill_(1.0 / stats["mean_neighbours"])
    if config["init_from"] and checkpoint is None:  # fine-tuning: weights from another run
        start = torch.load(config["init_from"], map_location="cpu", weights_only=False)
        if start["model_config"] != config["model"]:
            raise ValueError(
                f"init_from: {config['init_from']} has model options {start['model_config']}: "
                "use the same model section"
            )
        model.load_state_dict(start["best_model"])
        with torch.no_grad():  # the composition baseline follows this run's data; the output scale and
            # bond normalisation stay the checkpoint's, so the run starts from the same function
            model.baseline.copy_(torch.tensor(stats["baseline"]))
        print(f"initialised from the best model of {config['init_from']}", file=sys.stderr)
    model.to(device=device, dtype=dtype)
    out_dir.mkdir(parents=True, exist_ok=True)

    opt_cfg = config["optim"]
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=float(opt_cfg["lr"]), weight_decay=float(opt_cfg["weight_decay"])
    )
    batch_size = int(config["batch_size"])
    steps_per_epoch = math.ceil(len(train_set) / batch_size)
    epochs = int(config["epochs"])
    schedule = WarmupSchedule(
        optimizer,
        opt_cfg["schedule"],
        float(opt_cfg["lr"]),
        opt_cfg["warmup_steps"],
        epochs * steps_per_epoch,
        steps_per_epoch,
        opt_cfg["min_lr_ratio"],
        opt_cfg["step_epochs"],
        opt_cfg["step_gamma"],
    )
    epoch, batch_start, best_val, elapsed, history = 0, 0, math.inf, 0.0, []
    best_state = cpu_state(model)
    planned = False  # whether the schedule was fitted to the time budget
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        schedule.load_state_dict(checkpoint["scheduler"])
        epoch, batch_start = checkpoint["epoch"], checkpoint["batch_in_epoch"]
        best_val, best_state = checkpoint["best_val"], checkpoint["best_model"]
        elapsed, history, planned = checkpoint["elapsed_s"], checkpoint["history"], checkpoint["planned"]
        stats = checkpoint["stats"]
        set_rng_state(checkpoint["rng"])
        print(f"resuming from {ckpt_path}: epoch {epoch + 1}, batch {batch_start}", file=sys.stderr)

    def snapshot(batch_in_epoch: int) -> dict:
        return {
            "config": config,
            "model_config": config["model"],
            "model": cpu_state(model),
            "best_model": best_state,
            "optimizer": optimizer.state_dict(),
            "scheduler": schedule.state_dict(),
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "best_val": best_val,
            "elapsed_s": elapsed,
            "history": history,
            "planned": planned,
            "stats": stats,
            "rng": rng_state(),
            "n_parameters": count_parameters(model),
        }

    budget = None if config["max_minutes"] is None else 60.0 * float(config["max_minutes"])
    weights = config["loss"]
    symmetry_weight = float(weights["symmetry_weight"])
    grad_clip = opt_cfg["grad_clip"]
    print(
        f"PET: {count_parameters(model)} parameters, {stats['n_train']} train / {stats['n_val']} val "
        f"frames, device {device}, {dtype}; sigma_E {1000 * stats['sigma_e']:.3g} meV/atom, "
        f"sigma_F {stats['sigma_f']:.3g} eV/Å",
        file=sys.stderr,
    )
    model.train()
    stopped_by = None
    with StopRequest() as stop:
        while epoch < epochs and stopped_by is None:
            t_epoch = time.perf_counter()
            t_last = t_epoch
            batches, rotations = epoch_plan(
                len(train_set),
                batch_size,
                seed,
                epoch,
                config["data"]["rotate"],
                config["data"]["invert"],
                pairs=symmetry_weight > 0,
            )
            running = torch.zeros(2, dtype=torch.float64, device=device)
            bar = tqdm(
                range(batch_start, len(batches)),
                desc=f"epoch {epoch + 1}/{epochs}",
                leave=False,
                dynamic_ncols=True,
                mininterval=1.0,
                disable=None,
            )  # None: a bar on a terminal, none in log files
            for b in bar:
                idx = batches[b]
                graphs = [train_set[k] for k in idx.tolist()]
                if symmetry_weight > 0:
                    batch, both = paired_batch(graphs, rotations[idx], dtype)
                else:
                    batch = collate(graphs, None if rotations is None else rotations[idx], dtype)
                energies, forces, atomic = predict(model, batch, create_graph=True, return_atomic=True)
                loss, _, _ = loss_terms(energies, forces, batch, stats, weights, atomic)
                if symmetry_weight > 0:
                    loss = loss + symmetry_weight * symmetry_loss(
                        energies, forces, batch, both, stats, weights
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), float(grad_clip))
                optimizer.step()
                schedule.step()
                running += torch.stack(
                    [loss.detach().double(), torch.ones((), dtype=torch.float64, device=device)]
                )
                if b % 10 == 0:
                    bar.set_postfix(
                        loss=f"{float(loss.detach()):.4g}", lr=f"{optimizer.param_groups[0]['lr']:.3g}"
                    )
                now = time.perf_counter()
                elapsed += now - t_last
                t_last = now
                if on_batch is not None:
                    on_batch(epoch, b)
                if stop.signum:
                    stopped_by = stop.signum
                    break
                if budget is not None and elapsed > budget:
                    stopped_by = "time"
                    break
            bar.close()
            if stopped_by is not None and b + 1 < len(batches):
                save_checkpoint(ckpt_path, snapshot(b + 1))
                break
            # end of epoch: validate, keep the best, checkpoint
            metrics = validate(model, val_set, config, stats, dtype)
            elapsed += time.perf_counter() - t_last
            r = running.tolist()
            metrics.update(
                epoch=epoch + 1,
                train_loss=r[0] / max(r[1], 1),
                lr=optimizer.param_groups[0]["lr"],
                elapsed_s=elapsed,
                epoch_s=time.perf_counter() - t_epoch,
            )
            if metrics["loss"] < best_val:
                best_val, best_state = metrics["loss"], cpu_state(model)
            history.append(metrics)
            epoch, batch_start = epoch + 1, 0
            if budget is not None and not planned:
                # fit the schedule to the epochs that the time budget allows
                fit = max(1, int(budget // max(metrics["epoch_s"], 1e-9)))
                schedule.total_steps = min(epochs, fit) * steps_per_epoch
                planned = True
            save_checkpoint(ckpt_path, snapshot(0))
            with open(out_dir / "log.jsonl", "a") as fh:
                fh.write(json.dumps(metrics) + "\n")
            tqdm.write(
                f"epoch {epoch}: train loss {metrics['train_loss']:.4g}, val loss {metrics['loss']:.4g}, "
                f"E MAE {metrics['energy_mae_mev_per_atom']:.3g} meV/atom, F MAE "
                f"{metrics['force_mae_mev_per_a']:.4g} / RMSE {metrics['force_rmse_mev_per_a']:.4g} meV/Å"
                + (
                    f", rotation spread F {metrics['rotation_force_mad_mev_per_a']:.3g} meV/Å"
                    if "rotation_force_mad_mev_per_a" in metrics
                    else ""
                ),
                file=sys.stderr,
            )
            if budget is not None and elapsed + metrics["epoch_s"] > budget and stopped_by is None:
                stopped_by = "time"
    if isinstance(stopped_by, int):
        name = signal.Signals(stopped_by).name
        print(f"{name}: checkpoint written to {ckpt_path}; continue with --resume", file=sys.stderr)
        raise SystemExit(128 + stopped_by)
    exported = export(ckpt_path, out_dir / EXPORT) if history else None
    if exported:
        print(f"best model (val loss {best_val:.4g}) exported to {exported}", file=sys.stderr)
    return {
        "epochs": epoch,
        "best_val": best_val,
        "history": history,
        "checkpoint": str(ckpt_path),
        "model": exported,
        "stopped_by": stopped_by,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mlip_server.training.train", description=__doc__.split("\n")[0]
    )
    parser.add_argument("config", nargs="?", help="YAML training config")
    parser.add_argument("--resume", action="store_true", help="continue from output_dir/checkpoint.pt")
    parser.add_argument(
        "--device", help="cpu, cuda or cuda:N (overrides the config; --export: where a .pt2 package runs)"
    )
    parser.add_argument(
        "--export",
        nargs=2,
        metavar=("CHECKPOINT", "OUT"),
        help="export the best model of CHECKPOINT to the TorchScript file OUT (a compiled AOTInductor "
        "package for this machine when OUT ends in .pt2) and exit",
    )
    args = parser.parse_args(argv)
    try:
        if args.export:
            print(export(*args.export, device=args.device or "cpu"))
            return 0
        if not args.config:
            parser.error("give a CONFIG.yaml (or --export CHECKPOINT OUT)")
        config = load_config(args.config)
        if args.device:
            config["device"] = args.device
        train(config, resume=args.resume)
    except (FileNotFoundError, ValueError, ModelError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
