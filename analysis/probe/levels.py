"""How much each ``--level`` computes. Times are for the shipped 98k-parameter PET on 2 CPU cores.

``quick`` (≈ 13 min on 2 cores for the shipped model): every section, statistics only indicative.
``full`` (a GPU node, an estimated 2–3 h on one H100; days on 2 CPU cores): statistics for
publication-quality comparisons.
``tiny`` (seconds, for tests with toy models): every section, minimal lengths.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Level", "LEVELS"]


@dataclass(frozen=True)
class Level:
    """What one ``--level`` computes: grids, test-set frames, MD lengths (0.5 fs steps), blocks."""

    name: str
    grids: tuple = ("none", "i", "2", "2i", "3", "3i")
    reference_grid: str = "4i"  # the "converged" average the grids are compared with
    n_dataset_frames: int = 4  # frames of --dataset (evenly spaced); the default set is fixed
    molecule_steps: int = 4000  # 0.5 fs steps, NVE, per run (raw and 2i)
    molecule_stride: int = 10
    liquid_molecules: int = 64
    liquid_inner_steps: int = 600  # 0.5 fs steps per liquid run
    liquid_nmts: int = 10  # inner steps per outer (averaged) step
    liquid_stride_fs: float = 10.0
    liquid_average: str = "2i"
    ice_max_atoms: int = 600  # cells with more atoms are skipped for the averaged energies
    ice_grid: str = "2i"
    n_blocks: int = 4
    timing_repeats: int = 2


LEVELS = {
    "tiny": Level(
        "tiny",
        grids=("none", "i", "2", "2i"),
        reference_grid="3i",
        n_dataset_frames=2,
        molecule_steps=200,
        molecule_stride=5,
        liquid_molecules=16,
        liquid_inner_steps=200,
        liquid_nmts=5,
        liquid_stride_fs=5.0,
        ice_max_atoms=300,
        n_blocks=2,
        timing_repeats=1,
    ),
    "quick": Level("quick"),
    "full": Level(
        "full",
        reference_grid="5i",
        n_dataset_frames=190,
        molecule_steps=40000,
        molecule_stride=20,
        liquid_molecules=128,
        liquid_inner_steps=200000,
        liquid_stride_fs=10.0,
        ice_max_atoms=10**9,
        n_blocks=10,
        timing_repeats=5,
    ),
}
