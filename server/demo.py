"""``make demo``: i-PI + mlip-server end to end on the shipped water model.

Runs the paper's multiple-time-stepping setup on a 32-molecule water box: the raw
model every 0.5 fs inner step and the ``2i`` rotational average as a slow correction
every 5 fs outer step, both served by one server process. Prints where the outputs are
and a short summary (temperature, potential, size of the symmetry breaking).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from server import processes

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "water-pet.pt"

XML = """<simulation verbosity='low'>
  <output prefix='demo'>
    <properties stride='2' filename='out'> [step, time{{picosecond}}, conserved{{electronvolt}}, temperature{{kelvin}},
      potential{{electronvolt}}, pot_component_raw(0){{electronvolt}}, pot_component_raw(1){{electronvolt}}] </properties>
    <trajectory filename='pos' stride='2' format='ase'> positions </trajectory>
    <trajectory filename='diag' stride='2' extra_type='delta_energy'> extras_component_raw(1) </trajectory>
    <checkpoint stride='20'/>
  </output>
  <total_steps>{steps}</total_steps>
  <prng><seed>2024</seed></prng>
  <ffsocket name='raw' mode='unix' pbc='false'><address>{raw}</address><latency>1e-4</latency></ffsocket>
  <ffsocket name='avg' mode='unix' pbc='false'><address>{avg}</address><latency>1e-4</latency></ffsocket>
  <system>
    <initialize nbeads='1'><file mode='xyz' units='angstrom'>init.xyz</file>
      <velocities mode='thermal' units='kelvin'>300</velocities></initialize>
    <forces>
      <force forcefield='raw'><mts_weights>[-1, 1]</mts_weights></force>
      <force forcefield='avg'><mts_weights>[1, 0]</mts_weights></force>
    </forces>
    <ensemble><temperature units='kelvin'>300</temperature></ensemble>
    <motion mode='dynamics'><dynamics mode='nvt'>
      <timestep units='femtosecond'>5.0</timestep><nmts>[1, 10]</nmts>
      <thermostat mode='svr'><tau units='femtosecond'>10</tau></thermostat>
    </dynamics></motion>
  </system>
</simulation>
"""


def default_model(out: Path) -> Path:
    """The shipped model, or (until it lands) the project's toy stand-in, exported to ``out``."""
    if SHIPPED.exists():
        return SHIPPED
    from training.toy_models import export, water_toy

    print("demo: models/water-pet.pt is not shipped yet; using the toy stand-in model "
          "(training/toy_models.py:water_toy), which is NOT a physical water model")
    return Path(export(water_toy(), out / "water-toy.pt"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model file (default: the shipped water model)")
    p.add_argument("--molecules", type=int, default=32)
    p.add_argument("--steps", type=int, default=40, help="outer 5 fs steps")
    p.add_argument("--out", default=str(ROOT / "demo-output"))
    args = p.parse_args(argv)
    from training.structures import water_box
    from server.ipi_sim_files import write_ipi_xyz

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = Path(args.model) if args.model else default_model(out)
    write_ipi_xyz(water_box(args.molecules, seed=0), out / "init.xyz")
    raw, avg = processes.unique_name("demo-raw"), processes.unique_name("demo-avg")
    (out / "input.xml").write_text(XML.format(steps=args.steps, raw=raw, avg=avg))
    print(f"demo: {args.molecules} water molecules, MTS 10 × 0.5 fs inside 5 fs, {args.steps} outer steps, "
          f"model {model}")
    ipi = processes.start_ipi("input.xml", out)
    server = None
    try:
        processes.wait_for_socket(raw, ipi)
        server = processes.start_server(model.resolve(), "init.xyz", [f"unix:{raw}", f"unix:{avg}=2i"], out)
        codes = processes.wait([ipi, server], timeout=1800)
    finally:
        processes.stop([ipi, server], [raw, avg])
    if codes != [0, 0]:
        print(f"demo: failed (i-PI {codes[0]}, server {codes[1]}): see {out}/ipi.log and {out}/server.log")
        return 1
    data = np.loadtxt(out / "demo.out")
    n = len(data) // 2
    delta = data[:, 6] - data[:, 5]
    summary = {
        "time_ps": float(data[-1, 1]),
        "temperature_K_mean_second_half": float(data[n:, 3].mean()),
        "potential_eV_last": float(data[-1, 4]),
        "averaged_minus_raw_eV_mean": float(delta.mean()),
        "averaged_minus_raw_eV_std": float(delta.std()),
        "conserved_drift_eV": float(data[-1, 2] - data[0, 2]),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"demo: outputs in {out}: demo.out (properties), demo.pos_0.extxyz (trajectory), "
          "demo.diag (averaged − raw energy per step, eV), server.log (batch sizes, diagnostics)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
