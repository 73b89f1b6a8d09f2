"""Export an n2p2/RuNNer Behler–Parrinello potential as a TorchScript contract model.

    python -m mlip_server.training.export_teacher --data ../shared/data/bpnnp-revpbe0d3 \\
        --out models/local/bpnnp-revpbe0d3.pt [--dtype float64]

The exported module takes edge vectors in Å and returns energies in eV (see
:mod:`mlip_server.training.n2p2.model`). The file is written atomically (temporary file, then rename), so
a failed export leaves no half-written model behind.
"""

import argparse
import os
import sys
import tempfile

import torch
from ase.data import chemical_symbols

from mlip_server.core.errors import MLIPError
from mlip_server.training.n2p2 import N2P2Model, read_n2p2

__all__ = ["export", "main", "build_parser"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def export(data: str, out: str, dtype: str = "float64") -> torch.jit.ScriptModule:
    """Reads the potential in ``data``, scripts it, casts it to ``dtype`` and saves it to ``out``.

    Parameters
    ----------
    data : str
        Folder with ``input.nn``, ``scaling.data`` and ``weights.ZZZ.data`` (Bohr, Hartree).
    out : str
        TorchScript file to write (atomically).
    dtype : str
        ``float64`` or ``float32``: dtype of the saved parameters.

    Returns
    -------
    torch.jit.ScriptModule
        The scripted model (Å in, eV out).

    Raises
    ------
    mlip_server.training.n2p2.N2P2FormatError
        Bad or unsupported potential files.
    """
    potential = read_n2p2(data)
    module = torch.jit.script(N2P2Model(potential).to(_DTYPES[dtype]))
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".export-", suffix=".pt", dir=folder)
    os.close(fd)
    try:
        torch.jit.save(module, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return module


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``mlip-teacher``."""
    parser = argparse.ArgumentParser(
        prog="mlip-teacher",
        description="Export an n2p2/RuNNer Behler-Parrinello potential "
        "(input.nn, scaling.data, weights.ZZZ.data; Bohr and Hartree) as a TorchScript model "
        "(Å in, eV out).",
    )
    parser.add_argument("--data", required=True, help="folder with input.nn, scaling.data, weights.ZZZ.data")
    parser.add_argument(
        "--out", required=True, help="output TorchScript file, e.g. models/local/bpnnp-revpbe0d3.pt"
    )
    parser.add_argument(
        "--dtype",
        choices=sorted(_DTYPES),
        default="float64",
        help="dtype of the saved parameters (default float64; the model computes in the "
        "dtype of the edge vectors it is given)",
    )
    return parser


def main(argv=None) -> int:
    """Entry point of ``mlip-teacher``; returns the exit status (2 on bad potential files)."""
    args = build_parser().parse_args(argv)
    try:
        module = export(args.data, args.out, args.dtype)
    except MLIPError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    symbols = " ".join(chemical_symbols[z] for z in module.species)
    print(
        f"wrote {args.out}: Behler-Parrinello potential, species {symbols}, "
        f"cutoff {module.cutoff:.4f} Å, dtype {args.dtype}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
