"""Our server against the peer a user would pick: i-PI's own metatomic driver, same file, same input.

One metatomic file (default: the float32 metatomic export of the shipped PET, written by
``training.export_metatomic``) serves one i-PI input (a 192-atom DFT water frame, or a water box
when ``../shared/data`` is absent; NVT at 300 K, 0.25 fs) twice per repetition, interleaved
(ours, theirs, ours, theirs): once by ``mlip-server`` and once by i-PI's
``i-pi-py_driver -m metatomic``. The time per MD step is i-PI's own (``verbosity='high'``: its
"t/step" line every step), the median over the steps after ``--warmup``. Cases:

* ``classical``: one bead;
* ``contract``: one bead, ours serving the contract TorchScript file the metatomic file was
  exported from (what a user of the shipped model runs), theirs the metatomic file;
* ``pimd8``, ``pimd32``: path integrals, ``<batch_size>`` = beads for both (one batched call);
* ``2i``: the rotational average as the force (legendre order 2 + inversion, 36 copies): ours is
  one endpoint ``=2i`` (copies batched as its measurement chooses), theirs i-PI's
  ``<ffrotations>`` around their driver, one copy per call (``<batch_size>1``: batching the 36
  copies in one call of their driver made a step 20 s instead of 3 on 2 CPU cores);
* ``ase`` (in-process, not i-PI): one energy + forces + stress call of our
  :class:`~mlip_server.ase_calculator.MLIPCalculator` vs metatomic-ase's ``MetatomicCalculator``;
* ``profile`` (in-process, one thread, CPU time of the process, so less sensitive to other jobs):
  one energy + forces + virial call of our Evaluator vs i-PI's ``MetatomicDriver.compute_structure``
  under cProfile, split into the model's forward, its backward, and everything else (neighbour
  lists, systems, outputs: what is not the model's own arithmetic).

Both sides get the same environment and torch thread count (``--threads``, as OMP_NUM_THREADS
and, for ours, ``--threads``); OpenMP's wait policy is what the caller's environment says (the
runtime's default unless ``OMP_WAIT_POLICY`` is set). The machine, the policy and its load
(1-minute load average before and after) are recorded: on a loaded machine the order of the two
can flip, so compare only rows of one run.

    python -m bench.peers [--model FILE.pt] [--cases classical contract ... profile] [--steps 24]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import machine, write
from mlip_server import processes
from mlip_server.paths import checkout_root, shipped_model
from mlip_server.structures import water_box, write_ipi_xyz

__all__ = ["main", "step_times"]

CASES = ("classical", "contract", "pimd8", "pimd32", "2i", "ase", "profile")
BEADS = {"classical": 1, "contract": 1, "pimd8": 8, "pimd32": 32, "2i": 1}
STEP_LINE = re.compile(r"Average timings at MD step\s+(\d+)\. t/step:\s*([0-9.eE+-]+)")

SOCKET = (
    "<ffsocket name='{name}' mode='unix' pbc='false'><address>{address}</address>"
    "<latency>1e-4</latency><batch_size>{batch}</batch_size></ffsocket>"
)
ROTATIONS = (
    "<ffrotations name='mlip'><grid_mode>legendre</grid_mode><grid_order>2</grid_order>"
    "<inversion>true</inversion>" + SOCKET.format(name="raw", address="{address}", batch=1) + "</ffrotations>"
)
INPUT = """<simulation verbosity='high' safe_stride='100000'>
  <output prefix='sim'><properties stride='1' filename='out'> [step, potential] </properties></output>
  <total_steps>{steps}</total_steps>
  <prng><seed>12345</seed></prng>
  {forcefield}
  <system>
    <initialize nbeads='{beads}'><file mode='xyz' units='angstrom'>init.xyz</file>
      <velocities mode='thermal' units='kelvin'>300</velocities></initialize>
    <forces><force forcefield='mlip'/></forces>
    <ensemble><temperature units='kelvin'>300</temperature></ensemble>
    <motion mode='dynamics'><dynamics mode='nvt'><timestep units='femtosecond'>0.25</timestep>
      <thermostat mode='{thermostat}'><tau units='femtosecond'>100</tau></thermostat></dynamics></motion>
  </system>
</simulation>
"""


def _structure():
    """The 192-atom DFT water frame (or a 64-molecule box without ../shared/data) and its origin."""
    import ase.io

    dft = checkout_root().parent / "shared" / "data" / "dft" / "water_revpbe0d3_190.xyz"
    if dft.exists():
        return ase.io.read(dft, 0), f"frame 0 of {dft.name} (192 atoms)"
    return water_box(64, seed=1), "a 64-molecule water box made by mlip_server.structures (192 atoms)"


def _export(model: str, folder: Path) -> str:
    """The metatomic file to serve: ``model`` if it already is one, else its float32 export."""
    from mlip_server.formats.metatomic import is_metatomic_file

    if is_metatomic_file(model):
        return model
    from mlip_server.training.export_metatomic import export_metatomic

    return export_metatomic(model, str(folder / "model-metatomic.pt"), dtype="float32")


def step_times(log: str) -> list[float]:
    """i-PI's per-step times (s) from its ``verbosity='high'`` output, in step order."""
    return [float(t) for _, t in STEP_LINE.findall(log)]


def _run_ipi(
    work: Path,
    case: str,
    side: str,
    model: str,
    steps: int,
    threads: int,
    contract: str | None = None,
    device: str = "cpu",
) -> list[float]:
    """One i-PI run of ``case`` served by ``side`` (``ours`` or ``theirs``) from the metatomic file
    ``model`` (ours: the contract file ``contract`` in the ``contract`` case); i-PI's step times."""
    work.mkdir(parents=True)
    address = processes.unique_name("mlip-peers")
    beads = BEADS[case]
    if case == "2i" and side == "theirs":
        forcefield = ROTATIONS.format(address=address)
    else:
        forcefield = SOCKET.format(name="mlip", address=address, batch=beads)
    (work / "input.xml").write_text(
        INPUT.format(
            steps=steps,
            beads=beads,
            forcefield=forcefield,
            thermostat="pile_l" if beads > 1 else "svr",
        )
    )
    shutil.copy(work.parent.parent / "init.xyz", work / "init.xyz")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    bin_dir = Path(sys.executable).parent
    ipi_log = open(work / "ipi.log", "w")
    ipi = subprocess.Popen(
        [str(bin_dir / "i-pi"), "input.xml"], cwd=work, stdout=ipi_log, stderr=subprocess.STDOUT, env=env
    )
    if side == "ours":
        spec = "=2i" if case == "2i" else ""
        client = [
            str(bin_dir / "mlip-server"),
            "--model", contract if case == "contract" else model,
            "--structure", "init.xyz", "--address", f"unix:{address}{spec}",
            "--threads", str(threads), "--device", device,
        ]  # fmt: skip
    else:
        client = [
            str(bin_dir / "i-pi-py_driver"),
            "-m", "metatomic", "-o", f"template=init.xyz,model={model},device={device}", "-u", "-a", address,
        ]  # fmt: skip
    client_log = open(work / "client.log", "w")
    try:
        deadline = time.monotonic() + 60
        while not Path(f"/tmp/ipi_{address}").exists():
            if ipi.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"i-PI did not open its socket: {work / 'ipi.log'}")
            time.sleep(0.1)
        served = subprocess.Popen(client, cwd=work, stdout=client_log, stderr=subprocess.STDOUT, env=env)
        try:
            ipi.wait(timeout=3600)
        finally:
            if served.poll() is None:
                served.send_signal(signal.SIGTERM)
                try:
                    served.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    served.kill()
    finally:
        if ipi.poll() is None:
            ipi.kill()
        ipi_log.close()
        client_log.close()
        Path(f"/tmp/ipi_{address}").unlink(missing_ok=True)
    times = step_times((work / "ipi.log").read_text())
    if len(times) < steps - 1:
        raise RuntimeError(f"{case}/{side}: i-PI reported {len(times)} of {steps} steps: see {work}")
    return times


def _ase_times(model: str, atoms, repeats: int, threads: int, device: str = "cpu") -> dict:
    """Median seconds of one energy + forces + stress call: ours vs metatomic-ase's."""
    import torch
    from metatomic_ase import MetatomicCalculator

    from bench.family_timing import median_call_seconds
    from mlip_server.ase_calculator import MLIPCalculator

    torch.set_num_threads(threads)
    return {
        side: median_call_seconds(atoms.copy(), calc, repeats)
        for side, calc in (
            ("ours", MLIPCalculator(model=model, device=device)),
            ("theirs", MetatomicCalculator(model, device=device)),
        )
    }


def _profile(model: str, atoms, work: Path, calls: int = 10) -> dict:
    """CPU ms per call (one thread) of ours and theirs: total, forward, backward, the rest."""
    import cProfile
    import pstats

    import torch
    from ipi.pes.metatomic import MetatomicDriver
    from ipi.utils.units import unit_to_internal

    from mlip_server.core.graph import Structure
    from mlip_server.loading import load_evaluator

    torch.set_num_threads(1)
    structure = Structure.from_ase(atoms)
    evaluator = load_evaluator(model)
    driver = MetatomicDriver(str(work / "init.xyz"), model)
    pos = unit_to_internal("length", "angstrom", atoms.positions)
    cell = unit_to_internal("length", "angstrom", np.asarray(atoms.cell).T)
    sides = {
        "ours": lambda: evaluator.compute([structure]),
        "theirs": lambda: driver.compute_structure(cell, pos),
    }
    out = {}
    for side, call in sides.items():
        call(), call()  # warm-up (TorchScript profiling runs)
        profile = cProfile.Profile(time.process_time)
        profile.enable()
        for _ in range(calls):
            call()
        profile.disable()
        stats = pstats.Stats(profile).stats
        total = sum(tt for (_, _, tt, _, _) in stats.values())
        forward = sum(
            ct for (f, _, name), (_, _, _, ct, _) in stats.items() if name == "_call_impl" and "torch/nn" in f
        )
        backward = sum(tt for (_, _, name), (_, _, tt, _, _) in stats.items() if "run_backward" in name)
        out[side] = {
            key: 1e3 * value / calls
            for key, value in (
                ("total", total),
                ("forward", forward),
                ("backward", backward),
                ("rest", total - forward - backward),
            )
        }
    return out


def ipi_case(
    work: Path,
    case: str,
    model: str,
    steps: int,
    warmup: int,
    repeats: int,
    threads: int,
    contract: str | None = None,
    device: str = "cpu",
) -> dict:
    """``case`` through i-PI served by ours and theirs, interleaved ``repeats`` times (``work`` holds
    ``init.xyz``): the best median s/step of each side (``ours``, ``theirs``) and every run's."""
    per = {"ours": [], "theirs": []}
    for rep in range(repeats):
        for side in ("ours", "theirs"):
            times = _run_ipi(
                work / case / f"{side}-{rep}", case, side, model, steps, threads, contract, device
            )
            per[side].append(float(np.median(times[warmup:])))
            print(f"{case} {side} #{rep}: {1e3 * per[side][-1]:.1f} ms/step", flush=True)
    return {**{side: float(min(ts)) for side, ts in per.items()}, "runs": per}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--model", default=str(shipped_model()), help="a metatomic file, or a contract file to export"
    )
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    p.add_argument("--steps", type=int, default=24, help="MD steps per run (8 for pimd32 and 2i)")
    p.add_argument("--warmup", type=int, default=4, help="first steps left out of the median")
    p.add_argument("--repeats", type=int, default=2, help="interleaved repetitions per side")
    p.add_argument("--threads", type=int, default=2, help="torch threads of each side")
    p.add_argument("--device", default="cpu", help="torch device of both sides (profile: CPU only)")
    p.add_argument("--keep", action="store_true", help="keep the run folders (printed)")
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="mlip-peers-"))
    load_before = os.getloadavg()[0]
    atoms, origin = _structure()
    write_ipi_xyz(atoms, work / "init.xyz")
    model = _export(args.model, work)
    contract = None if model == args.model else args.model
    if contract is None and "contract" in args.cases:
        args.cases.remove("contract")
        print("contract case left out: --model is a metatomic file, not a contract file", flush=True)
    rows = {}
    try:
        for case in args.cases:
            if case == "profile":
                if args.device == "cpu":
                    rows[case] = _profile(model, atoms, work)
                continue
            if case == "ase":
                per = {"ours": [], "theirs": []}
                for _ in range(args.repeats):
                    for side, t in _ase_times(model, atoms, 5, args.threads, args.device).items():
                        per[side].append(t)
                rows[case] = {side: float(min(ts)) for side, ts in per.items()}
            else:
                steps = (
                    args.steps
                    if case in ("classical", "contract", "pimd8")
                    else max(args.warmup + 4, args.steps // 3)
                )
                rows[case] = ipi_case(
                    work, case, model, steps, args.warmup, args.repeats, args.threads, contract, args.device
                )
            rows[case]["ratio"] = rows[case]["ours"] / rows[case]["theirs"]
    finally:
        if args.keep:
            print(f"run folders kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()[0]
    m = machine(args.device)
    data = {
        "machine": m,
        "load_average_1min": {"before": load_before, "after": load_after},
        "model": args.model,
        "structure": origin,
        "threads": args.threads,
        "seconds_per_step_or_call": rows,
    }
    names = {
        "classical": "classical NVT (i-PI, s/step)",
        "contract": "classical NVT, ours serving the contract file (i-PI, s/step)",
        "pimd8": "PIMD, 8 beads, one batched call (i-PI, s/step)",
        "pimd32": "PIMD, 32 beads, one batched call (i-PI, s/step)",
        "2i": "`2i` average as the force: ours `=2i` vs `<ffrotations>` around theirs (i-PI, s/step)",
        "ase": "ASE: one energy+forces+stress call (ours MLIPCalculator vs MetatomicCalculator, s)",
    }
    lines = [
        "## Peers: our server vs i-PI's own metatomic driver on the same file",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores{', ' + m['gpu'] if 'gpu' in m else ''}, "
        f"device {args.device}, torch {m['torch']}, {m['date']}; "
        f"load average (1 min) {load_before:.2f} before, {load_after:.2f} after. "
        f"Model: `{Path(args.model).name}` served as its metatomic float32 export; structure: {origin}; "
        f"{args.threads} torch threads each; OpenMP wait policy "
        f"{m.get('omp_wait_policy', 'the runtime default')}. "
        f"i-PI's own per-step timing, median after {args.warmup} "
        f"warm-up steps, best of {args.repeats} interleaved runs per side (`python -m bench.peers`).",
        "",
        "| case | ours | theirs | ours / theirs |",
        "|---|---|---|---|",
    ]
    for case, row in rows.items():
        if case == "profile":
            continue
        ours, theirs = 1e3 * row["ours"], 1e3 * row["theirs"]
        lines.append(f"| {names[case]} | {ours:.1f} ms | {theirs:.1f} ms | **{row['ratio']:.2f}** |")
    if "profile" in rows:
        prof = rows["profile"]
        lines += [
            "",
            "Profile of one energy + forces + virial call, in-process, one thread, CPU ms per call "
            "(cProfile with the process's CPU time; `forward`: the model module's call, `backward`: "
            "autograd's, `rest`: neighbour lists, systems, outputs):",
            "",
            "| | total | forward | backward | rest |",
            "|---|---|---|---|---|",
        ]
        for side in ("ours", "theirs"):
            r = prof[side]
            lines.append(
                f"| {side} | {r['total']:.1f} | {r['forward']:.1f} | {r['backward']:.1f} | {r['rest']:.2f} |"
            )
    lines.append("")
    write("peers", data, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
