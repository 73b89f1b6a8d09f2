"""Export a contract model (ARCHITECTURE.md, "the model contract") as a metatomic ``AtomisticModel``.

The exported file runs wherever metatomic models run: i-PI's ``-m metatomic`` driver, ASE's
``MetatomicCalculator``, LAMMPS ``pair_style metatomic``, and ``mlip-server`` itself. The wrapper
requests one full, strict neighbour list at the model's cutoff (Å), feeds its vectors and pairs
to the contract's ``forward`` and returns the ``energy`` output (eV): per system or per atom
(``sample_kind="atom"``), for all atoms or the ``selected_atoms`` (a domain-decomposed engine's
owned atoms). It declares ``interaction_range`` = the contract model's own ``interaction_range``
(cutoff × message-passing layers; the cutoff when the model declares none).

    python -m mlip_server.training.export_metatomic models/water-pet.pt models/local/water-pet-metatomic.pt \\
        [--dtype float32]

Needs ``pip install -e .[metatomic]``.
"""

import argparse
import sys

import torch

__all__ = ["export_metatomic", "main"]


def export_metatomic(
    model, path, dtype: str = "float64", name: str = "mlip-server contract model", variants=None
) -> str:
    """Wraps ``model`` (a contract TorchScript file or module) and saves it as a metatomic model.

    Parameters
    ----------
    model
        path to a contract model or a ScriptModule.
    path
        output file.
    dtype
        ``float32`` or ``float64``, the dtype the metatomic model declares and runs in.
    name
        the model's metadata name.
    variants
        optional {NAME: factor}: extra outputs ``energy/NAME`` (the energy times the factor).
    """
    import metatomic.torch as mta

    module = (
        torch.jit.load(str(model), map_location="cpu") if not isinstance(model, torch.nn.Module) else model
    )
    module = module.to(dtype=getattr(torch, dtype)).eval()
    energy = mta.ModelOutput(unit="eV", sample_kind="atom", description="the model's energy")
    outputs = {"energy": energy}
    for variant in variants or {}:
        outputs[f"energy/{variant}"] = mta.ModelOutput(
            unit="eV", sample_kind="atom", description=f"energy × {variants[variant]}"
        )
    direct = hasattr(module, "direct_forces")
    if direct:  # a direct-force head: metatomic's non-conservative outputs
        outputs["non_conservative_force"] = mta.ModelOutput(
            unit="eV/Angstrom", sample_kind="atom", description="direct forces (net force not removed)"
        )
        if hasattr(module, "direct_virial"):
            outputs["non_conservative_stress"] = mta.ModelOutput(
                unit="eV/Angstrom^3", sample_kind="system", description="direct stress -W/V"
            )
    interaction_range = float(getattr(module, "interaction_range", module.cutoff))
    capabilities = mta.ModelCapabilities(
        outputs=outputs,
        atomic_types=[int(z) for z in module.species],
        interaction_range=interaction_range,
        length_unit="angstrom",
        supported_devices=["cpu", "cuda"],
        dtype=dtype,
    )
    from mlip_server.training.metatomic_wrapper import ContractAsMetatomic

    wrapper = ContractAsMetatomic(module, variants).eval()
    wrapped = mta.AtomisticModel(wrapper, mta.ModelMetadata(name=name), capabilities)
    wrapped.save(str(path))
    return str(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="contract TorchScript model")
    p.add_argument("output", help="metatomic model file to write")
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    args = p.parse_args(argv)
    try:
        export_metatomic(args.model, args.output, args.dtype)
    except ImportError:
        print(
            "export_metatomic: error: metatomic-torch is not installed: pip install -e .[metatomic]",
            file=sys.stderr,
        )
        return 2
    print(f"export_metatomic: wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
