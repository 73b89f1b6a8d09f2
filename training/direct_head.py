"""A direct-force head on a trained PET, fitted with the backbone frozen.

"The dark side of the forces" (Bigi, Langer & Ceriotti 2024/25): forces predicted by a head of the
network, without the backward pass, are several times cheaper than −∇E but not conservative; as
the fast force of a multiple-time-step integrator, with the conservative force as the slow
correction, they keep most of the speed and the energy conservation.

The head (:class:`PETWithDirectForces`): for every edge e = i→j the last message-passing layer's
output token o_e (what PET's bond-energy head reads) and that of its reverse edge ē = j→i (−∇E on i
holds the gradients of both atoms' energies along the pair; ``reverse``, the default), with the
edge's direction r̂_e and length, go through a three-layer SiLU MLP to a scalar a_e and a vector b_e;
the force on the centre atom is

    F_i = s_F Σ_{e: i centre} f_c(r_e) (a_e r̂_e + b_e)     (eV/Å),

a learned combination of the directions to its neighbours plus Cartesian terms (PET is not
equivariant either; smooth at the cutoff, like the energy),
with ``force_scale`` s_F (eV/Å) the RMS of the targets. Each F_i depends only on atom i's
environment, so a domain-decomposed rank gets its owned atoms' forces from its own cluster. The net
force is not zero by construction: the server removes it (and reports it). There is no direct
virial (a direct endpoint sends a zero virial and NPT refuses it).

Targets: the model's *own* conservative forces (float32, as served), not the teacher's or DFT's.
The head exists to be the fast part of an MTS integrator whose slow part is the conservative
(averaged) force minus this head: the closer it is to the conservative force, the smaller and
slower the correction and the longer the outer step can be; a head fitted to the teacher could
be closer to the teacher than the backbone's gradient, but every difference between the two
forces is what the outer step has to integrate. The backbone is frozen and untouched: the
conservative energy and forces of the exported file are bitwise those of the checkpoint.

Frames: classical Langevin MD driven by the model itself (in-process through the ASE calculator)
at several temperatures and densities, plus the same frames displaced by Gaussian noise (path
integral beads sit further from the classical minimum); the held-out set is a separate run. The
backbone's tokens are computed once per frame (no gradient), then only the head trains.

Usage::

    python -m mlip_server.training.direct_head \\
        --checkpoint models/checkpoints/water-pet-phase3/checkpoint.pt \\
        --frames runs/direct-head/frames --out models/water-pet.pt --epochs 24 --threads 1 \\
        --report models/validation/direct-head-fit.json
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import List, Tuple

import numpy as np
import torch
from torch import nn

from .pet import PET, cutoff_function, reverse_edges

__all__ = ["PETWithDirectForces", "sample_frames", "fit_head", "main"]


class PETWithDirectForces(nn.Module):
    """A :class:`~mlip_server.training.pet.PET` plus a direct-force head, under the model contract.

    ``forward`` and ``atomic_energies`` are the PET's own (the same code: bitwise the same
    results); ``direct_forces`` and ``forward_direct`` are the contract's direct methods
    (docs/topics/model-contract.md): one backbone pass gives the energies and the direct forces.

    Parameters
    ----------
    pet : PET
        The trained backbone (its parameters are not changed here).
    hidden : int
        Width of the head's hidden layer.
    """

    cutoff: float
    species: List[int]
    interaction_range: float

    reverse: bool

    def __init__(self, pet: PET, hidden: int = 64, reverse: bool = True):
        super().__init__()
        self.pet = pet
        self.cutoff = pet.cutoff
        self.species = list(pet.species)
        self.interaction_range = pet.interaction_range
        self.reverse = reverse
        d_model = pet.layers[-1].atom_head[0].in_features
        self.head = nn.Sequential(
            nn.Linear(d_model * (2 if reverse else 1) + 4, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 4),
        )
        self.register_buffer("force_scale", torch.ones(()))  # eV/Å

    def forward(
        self,
        edge_vectors: torch.Tensor,
        edge_index: torch.Tensor,
        numbers: torch.Tensor,
        structure_index: torch.Tensor,
        n_structures: int,
    ) -> torch.Tensor:
        """Total energies [n_structures], eV: the PET's."""
        return self.pet(edge_vectors, edge_index, numbers, structure_index, n_structures)

    @torch.jit.export
    def atomic_energies(
        self, edge_vectors: torch.Tensor, edge_index: torch.Tensor, numbers: torch.Tensor, with_baseline: bool
    ) -> torch.Tensor:
        """Per-atom energies [N], eV: the PET's."""
        return self.pet.atomic_energies(edge_vectors, edge_index, numbers, with_baseline)

    @torch.jit.export
    def head_forces(
        self, tokens: torch.Tensor, edge_vectors: torch.Tensor, edge_index: torch.Tensor, n_atoms: int
    ) -> torch.Tensor:
        """F_i = s_F Σ_{e: i centre} f_c(r_e) (a_e r̂_e + b_e) [N,3] eV/Å, with (a_e, b_e) =
        MLP(o_e, o_ē, r̂_e, r_e/ℓ) from the edge's token o_e, its reverse edge's o_ē (``reverse``:
        −∇E on i holds the gradients of both i's and j's energies along the pair) and the geometry."""
        r = torch.sqrt((edge_vectors * edge_vectors).sum(dim=1))
        fc = cutoff_function(r, self.pet.cutoff, self.pet.cutoff_width)
        unit = edge_vectors / r.unsqueeze(1)
        features = [tokens]
        if self.reverse:
            features.append(tokens.index_select(0, reverse_edges(edge_index, edge_vectors, n_atoms)))
        features.append(unit)  # (append, not +=: the TorchScript → export converter takes no list add_)
        features.append((r / self.pet.length_scale).unsqueeze(1))
        out = self.head(torch.cat(features, dim=1))
        vector = out[:, :1] * unit + out[:, 1:]
        weight = (fc * self.force_scale).unsqueeze(1)
        forces = torch.zeros((n_atoms, 3), dtype=edge_vectors.dtype, device=edge_vectors.device)
        return forces.index_add(0, edge_index[0], weight * vector)

    @torch.jit.export
    def forward_direct(
        self,
        edge_vectors: torch.Tensor,
        edge_index: torch.Tensor,
        numbers: torch.Tensor,
        structure_index: torch.Tensor,
        n_structures: int,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(energies [n_structures] eV, direct forces [N,3] eV/Å) from one backbone pass."""
        energy, tokens, kind = self.pet.backbone(edge_vectors, edge_index, numbers)
        atomic = energy * self.pet.energy_scale + self.pet.baseline[kind]
        energies = torch.zeros(n_structures, dtype=atomic.dtype, device=atomic.device)
        energies = energies.index_add(0, structure_index, atomic)
        return energies, self.head_forces(tokens, edge_vectors, edge_index, numbers.shape[0])

    @torch.jit.export
    def direct_forces(
        self,
        edge_vectors: torch.Tensor,
        edge_index: torch.Tensor,
        numbers: torch.Tensor,
        structure_index: torch.Tensor,
        n_structures: int,
    ) -> torch.Tensor:
        """Direct forces [N,3], eV/Å."""
        _, tokens, _ = self.pet.backbone(edge_vectors, edge_index, numbers)
        return self.head_forces(tokens, edge_vectors, edge_index, numbers.shape[0])


def to_torchscript(model: PETWithDirectForces) -> torch.jit.ScriptModule:
    """A scripted CPU float32 copy without parameter gradients (as
    :func:`mlip_server.training.pet.to_torchscript`)."""
    import copy

    clone = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return torch.jit.script(clone)


# -- frames ------------------------------------------------------------------------------------
RUNS = [  # (temperature K, density g/cm³, seed): training; the last is held out
    (300.0, 0.997, 1),
    (400.0, 0.997, 2),
    (300.0, 1.10, 3),
    (350.0, 0.92, 4),
    (330.0, 1.03, 5),
]
HELD_OUT = (350.0, 1.00, 11)


def sample_frames(model_path, out: Path, run, steps: int, every: int, skip: int, timestep_fs: float = 0.5):
    """Langevin MD of 64 molecules driven by ``model_path`` (in-process); writes every ``every``-th
    frame after ``skip`` steps to ``out`` (extxyz). Starts from the shipped equilibrated liquid,
    rescaled to the run's density."""
    from ase import units
    from ase.io import read, write
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    from mlip_server.ase_calculator import MLIPCalculator
    from mlip_server.paths import experiments_dir

    temperature, density, seed = run
    atoms = read(experiments_dir() / "structures" / "water-64-liquid-300K.extxyz")
    mass = atoms.get_masses().sum() * 1.66053906660e-24  # g
    scale = (mass / density / 1e-24 / atoms.get_volume()) ** (1 / 3)
    atoms.set_cell(atoms.cell * scale, scale_atoms=True)
    atoms.calc = MLIPCalculator(str(model_path))
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=np.random.default_rng(seed))
    dyn = Langevin(
        atoms,
        timestep_fs * units.fs,
        temperature_K=temperature,
        friction=0.02,
        rng=np.random.default_rng(seed),
    )
    frames = []

    def keep():
        if dyn.nsteps >= skip and dyn.nsteps % every == 0:
            frames.append(atoms.copy())

    dyn.attach(keep, interval=1)
    dyn.run(steps)
    for f in frames:
        f.calc = None
    write(out, frames)
    return len(frames)


def perturbed(frames, sigma: float, seed: int):
    """Copies of ``frames`` with every position displaced by N(0, σ²) per component (Å)."""
    rng = np.random.default_rng(seed)
    out = []
    for f in frames:
        g = f.copy()
        g.positions = g.positions + rng.normal(0.0, sigma, g.positions.shape)
        out.append(g)
    return out


# -- tokens and targets ------------------------------------------------------------------------
def _graph_tensors(atoms, cutoff):
    from mlip_server.core.graph import Structure, build_graph

    g = build_graph(Structure.from_ase(atoms), "frame", {1, 8}, cutoff, 0.1, "direct-head")
    return (
        torch.tensor(g.vectors, dtype=torch.float32),
        torch.from_numpy(g.edge_index.copy()),
        torch.from_numpy(g.numbers.copy()),
    )


def cache(pet: PET, frames, conservative) -> list:
    """Per frame: (last-layer tokens [E,d], edge vectors [E,3], edge index [2,E], n_atoms, target
    forces [N,3]) with the target the model's own conservative forces (float32, as served)."""
    from mlip_server.core.graph import Structure

    items = []
    for atoms in frames:
        vectors, edge_index, numbers = _graph_tensors(atoms, pet.cutoff)
        with torch.no_grad():
            _, tokens, _ = pet.backbone(vectors, edge_index, numbers)
        target = conservative.compute([Structure.from_ase(atoms)])[0].forces  # needs autograd
        target = torch.tensor(target, dtype=torch.float32)
        items.append((tokens, vectors, edge_index, len(numbers), target))
    return items


def rmse(model: PETWithDirectForces, items) -> float:
    """Force RMSE (eV/Å) of the head against the items' targets, net force removed as served."""
    se, n = 0.0, 0
    with torch.no_grad():
        for tokens, vectors, edge_index, n_atoms, target in items:
            f = model.head_forces(tokens, vectors, edge_index, n_atoms)
            f = f - f.mean(dim=0, keepdim=True)
            se += float(((f - target) ** 2).sum())
            n += target.numel()
    return math.sqrt(se / max(n, 1))


def fit_head(model: PETWithDirectForces, train, valid, epochs: int, lr: float = 2e-3, log=print) -> dict:
    """Adam on the head only (per-frame mean-squared force error), cosine-decayed; keeps the head
    with the best validation RMSE. Returns the history."""
    model.force_scale.fill_(float(torch.cat([t[4] for t in train]).pow(2).mean().sqrt()))
    params = list(model.head.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * len(train))
    best, best_state, history = float("inf"), None, []
    rng = np.random.default_rng(0)
    for epoch in range(epochs):
        t0 = time.perf_counter()
        for k in rng.permutation(len(train)):
            tokens, vectors, edge_index, n_atoms, target = train[k]
            f = model.head_forces(tokens, vectors, edge_index, n_atoms)
            loss = ((f - f.mean(dim=0, keepdim=True) - target) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        v = rmse(model, valid)
        history.append({"epoch": epoch, "valid_rmse": v, "seconds": time.perf_counter() - t0})
        log(f"epoch {epoch}: validation force RMSE {1e3 * v:.1f} meV/Å ({time.perf_counter() - t0:.1f} s)")
        if v < best:
            best, best_state = v, {k: t.clone() for k, t in model.head.state_dict().items()}
    model.head.load_state_dict(best_state)
    return {"history": history, "best_valid_rmse": best}


def _force_rmse(a: list, b: list) -> float:
    return float(np.sqrt(np.mean(np.concatenate([(x - y).ravel() ** 2 for x, y in zip(a, b)]))))


def evaluate(model_path: str, teacher_path, dft_path, held_out_path) -> dict:
    """Force RMSEs (eV/Å) of the served direct forces (net force removed) and of the conservative
    ones against each other, the DFT labels of ``dft_path`` and the teacher on the held-out MD
    frames; and the net force the server removed (mean |ΣF|, eV/Å)."""
    from ase.io import read

    from mlip_server.core.graph import Structure
    from mlip_server.loading import load_evaluator

    ev = load_evaluator(model_path)
    teacher = load_evaluator(teacher_path) if teacher_path else None
    out = {}
    for name, path in (("dft_test", dft_path), ("held_out_md", held_out_path)):
        if not path:
            continue
        frames = read(path, ":")
        structures = [Structure.from_ase(a) for a in frames]
        cons = [ev.compute([s])[0].forces for s in structures]
        direct = [ev.compute([s], "direct")[0] for s in structures]
        d_forces = [d.forces for d in direct]
        row = {
            "frames": len(frames),
            "direct_vs_conservative": _force_rmse(d_forces, cons),
            "mean_net_force_removed": float(np.mean([d.extras["direct_net_force"] for d in direct])),
        }
        if "forces" in frames[0].arrays or (
            frames[0].calc is not None and "forces" in frames[0].calc.results
        ):
            labels = [a.arrays["forces"] if "forces" in a.arrays else a.get_forces() for a in frames]
            row.update(
                direct_vs_dft=_force_rmse(d_forces, labels), conservative_vs_dft=_force_rmse(cons, labels)
            )
        if teacher is not None:
            ref = [teacher.compute([s])[0].forces for s in structures]
            row.update(
                direct_vs_teacher=_force_rmse(d_forces, ref), conservative_vs_teacher=_force_rmse(cons, ref)
            )
        out[name] = row
        print(name, json.dumps(row), flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m mlip_server.training.direct_head", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--checkpoint", help="the PET checkpoint the shipped model was exported from")
    p.add_argument("--model", default="models/water-pet.pt", help="the exported model that drives the MD")
    p.add_argument("--frames", required=True, help="folder for the sampled frames (reused if present)")
    p.add_argument("--out", help="where to write the model with its direct head")
    p.add_argument("--report", default=None, help="JSON with the head's numbers")
    p.add_argument("--steps", type=int, default=1200, help="MD steps per run (0.5 fs)")
    p.add_argument("--every", type=int, default=10, help="keep every N-th step")
    p.add_argument("--skip", type=int, default=200, help="steps before the first kept frame")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument(
        "--reverse",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the head also reads each edge's reverse-edge token",
    )
    p.add_argument("--lr", type=float, default=2e-3, help="Adam's learning rate (cosine-decayed)")
    p.add_argument("--noise", type=float, default=0.04, help="σ of the displaced copies, Å")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument(
        "--evaluate",
        metavar="MODEL",
        help="only evaluate MODEL's head (DFT frames --dft, held-out MD frames, --teacher) into --report",
    )
    p.add_argument("--teacher", default=None, help="the n2p2 teacher as TorchScript (make teacher)")
    p.add_argument("--dft", default=None, help="DFT test frames with forces (../shared/data/dft/...)")
    args = p.parse_args(argv)
    if args.evaluate:
        if args.threads:
            torch.set_num_threads(args.threads)
        held = Path(args.frames) / f"md-{HELD_OUT[0]:.0f}K-{HELD_OUT[1]:.3f}.extxyz"
        result = evaluate(args.evaluate, args.teacher, args.dft, str(held) if held.exists() else None)
        if args.report:
            Path(args.report).write_text(json.dumps(result, indent=1) + "\n")
        return 0
    if not args.checkpoint or not args.out:
        p.error("training needs --checkpoint and --out")
    from ase.io import read

    from mlip_server.loading import load_evaluator

    from .checkpoints import model_from_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = Path(args.frames)
    folder.mkdir(parents=True, exist_ok=True)
    for run in RUNS + [HELD_OUT]:
        path = folder / f"md-{run[0]:.0f}K-{run[1]:.3f}.extxyz"
        if not path.exists():
            t0 = time.perf_counter()
            n = sample_frames(args.model, path, run, args.steps, args.every, args.skip)
            print(f"{path.name}: {n} frames ({time.perf_counter() - t0:.0f} s)", flush=True)
    train_frames, held = [], []
    for run in RUNS:
        train_frames += read(folder / f"md-{run[0]:.0f}K-{run[1]:.3f}.extxyz", ":")
    held = read(folder / f"md-{HELD_OUT[0]:.0f}K-{HELD_OUT[1]:.3f}.extxyz", ":")
    train_frames += perturbed(train_frames, args.noise, seed=7)
    rng = np.random.default_rng(3)
    order = rng.permutation(len(train_frames))
    n_valid = max(len(order) // 10, 1)
    valid_frames = [train_frames[k] for k in order[:n_valid]]
    train_frames = [train_frames[k] for k in order[n_valid:]]
    checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    pet = model_from_checkpoint(checkpoint).float().eval()
    for q in pet.parameters():
        q.requires_grad_(False)
    conservative = load_evaluator(args.model)
    t0 = time.perf_counter()
    cached = folder / "tokens.pt"  # tokens and targets of this checkpoint and these frames
    if cached.exists():
        train, valid, held_items = torch.load(cached, weights_only=False)
    else:
        train, valid, held_items = (cache(pet, f, conservative) for f in (train_frames, valid_frames, held))
        torch.save((train, valid, held_items), cached)
    print(
        f"tokens and targets of {len(train)} + {len(valid)} + {len(held_items)} frames "
        f"({time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    model = PETWithDirectForces(pet, hidden=args.hidden, reverse=args.reverse)
    t0 = time.perf_counter()
    history = fit_head(model, train, valid, args.epochs, args.lr, log=lambda line: print(line, flush=True))
    fit_seconds = time.perf_counter() - t0
    scripted = to_torchscript(model)
    torch.jit.save(scripted, args.out)
    report = {
        "checkpoint": args.checkpoint,
        "frames": {"train": len(train), "valid": len(valid), "held_out_md": len(held_items)},
        "runs": RUNS,
        "held_out_run": HELD_OUT,
        "noise_sigma": args.noise,
        "hidden": args.hidden,
        "reverse": args.reverse,
        "lr": args.lr,
        "parameters": sum(q.numel() for q in model.head.parameters()),
        "epochs": args.epochs,
        "fit_seconds": fit_seconds,
        "force_scale": float(model.force_scale),
        "valid_rmse_vs_conservative": history["best_valid_rmse"],
        "held_out_rmse_vs_conservative": rmse(model, held_items),
        "history": history["history"],
    }
    print(json.dumps({k: v for k, v in report.items() if k != "history"}, indent=1))
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
