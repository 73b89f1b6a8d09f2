"""An ASE calculator on the Evaluator (energy, forces, stress), optionally averaged."""

from __future__ import annotations

from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from .core.averaging import Averaging
from .core.evaluator import Evaluator, Structure
from .loading import load_evaluator

__all__ = ["MLIPCalculator"]


class MLIPCalculator(Calculator):
    """ASE calculator for a contract model.

    Parameters
    ----------
    model : str, torch.jit.ScriptModule, Evaluator, or a list of models
        Model path, scripted module, or an existing :class:`Evaluator`; a list of two or more
        models is a committee (its mean is the calculator's result).
    average : str or Averaging
        Averaging spec (``none``, ``2i``, ``random``, ...).
    device, dtype : str
        As for :func:`mlip_server.loading.load_evaluator`.

    Notes
    -----
    Results: ``energy``/``free_energy`` (eV), ``forces`` (eV/Å), ``stress`` (eV/Å³,
    = −W/V with the virial W symmetrised; periodic cells only), and for averaged
    models the diagnostics in ``results["extras"]``; for a committee also
    ``committee_energy_std`` (eV) and ``committee_force_std_max`` (eV/Å) there, and every member's
    result in :attr:`committee` (a :class:`mlip_server.core.graph.CommitteeResult`).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, model, average="none", device="cpu", dtype=None, committee_serve="mean", **kwargs):
        super().__init__(**kwargs)
        self.evaluator = (
            model
            if isinstance(model, Evaluator)
            else load_evaluator(model, device=device, dtype=dtype, committee_serve=committee_serve)
        )
        self.committee = None
        self.averaging = Averaging(average) if isinstance(average, str) else average

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties or ["energy"], system_changes)
        result = self.evaluator.compute([Structure.from_ase(self.atoms)], self.averaging)[0]
        self.committee = result.committee
        self.results = {
            "energy": result.energy,
            "free_energy": result.energy,
            "forces": result.forces,
            "extras": result.extras,
        }
        if self.atoms.pbc.all():
            self.results["stress"] = full_3x3_to_voigt_6_stress(-result.virial / self.atoms.get_volume())
        elif "stress" in (properties or []):
            from ase.calculators.calculator import PropertyNotImplementedError

            raise PropertyNotImplementedError("stress needs a cell that is periodic in all three directions")
