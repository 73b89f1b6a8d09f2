"""Fault campaign: both engines, side by side in one run, through the command-line tools only.

Every fault is injected into real processes of ``mlip-run`` (i-PI + ``mlip-server``) and
``mlip-lammps-run`` (LAMMPS bridge under ``mpiexec`` + ``mlip-server``), by signals sent to their
pids: a server SIGKILLed or hung (SIGSTOP), the launcher SIGTERMed and then ``--resume``d, every
process of the run SIGKILLed at once (a lost node) and then ``--resume``d; and the SLURM walltime
chain of ``hpc/ipi-cpu-server-gpu.slurm`` on a real single-node SLURM (``hpc/local-slurm``) when
one can be started here. Each row is compared with an uninterrupted reference run of the same
options measured in the same campaign (float64, CPU): steps lost (expected steps missing from
the final outputs), steps duplicated (extra occurrences), extra wall time, and the largest
relative difference of the potential energy per step.

The injection steps are drawn from a seeded RNG (``--seed``; the draws are in the results). The
results are written after every row (a cut campaign keeps what it measured).

    python -m bench.fault_campaign [--seed 26] [--groups toy lammps pet slurm]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from bench.common import machine, write
from mlip_server.paths import checkout_root, lammps_inputs_dir, shipped_model

__all__ = ["main"]

ROOT = checkout_root()
BIN = Path(sys.executable).parent
MLIP_RUN = str(BIN / "mlip-run")
LAMMPS_RUN = str(BIN / "mlip-lammps-run")
CLUSTER_SCRIPT = ROOT / "hpc" / "local-slurm" / "cluster.sh"
IPI_TEMPLATE = ROOT / "hpc" / "ipi-cpu-server-gpu.slurm"
POLL = 0.05  # s


# --------------------------------------------------------------------------- processes
def _env() -> dict:
    env = dict(os.environ)
    lib = str(BIN.parent / "lib")
    if lib not in env.get("LD_LIBRARY_PATH", ""):
        env["LD_LIBRARY_PATH"] = lib + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    return env


def _start(cmd: list, log: Path) -> subprocess.Popen:
    """A launcher in its own session (as a batch system starts it), output to ``log``."""
    return subprocess.Popen(
        [str(c) for c in cmd],
        stdout=open(log, "a"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=_env(),
        start_new_session=True,
    )


def _table() -> dict:
    """pid → (ppid, command line) of every process now."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            ppid = int(text.rsplit(")", 1)[1].split()[1])
            cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        found[int(stat.parent.name)] = (ppid, cmd)
    return found


def _descendants(pid: int) -> dict:
    """pid → command line of every descendant of ``pid``."""
    table, out, todo = _table(), {}, [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, cmd) in table.items():
            if ppid == parent and child not in out:
                out[child] = cmd
                todo.append(child)
    return out


def _ipi_children(launcher: int) -> dict:
    """``ipi`` and ``server`` pids among the launcher's children (``pgrep -P``)."""
    out = subprocess.run(["pgrep", "-a", "-P", str(launcher)], capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        pid, cmd = line.split(" ", 1)
        if "ipi_main" in cmd:
            found["ipi"] = int(pid)
        elif "serve" in cmd:
            found["server"] = int(pid)
    return found


def _lammps_servers(launcher: int) -> dict:
    """rank address suffix (or 'gather') → pid of the run's mlip-server processes."""
    found = {}
    for pid, cmd in _descendants(launcher).items():
        if "mlip-server" in cmd or "mlip_server.ipi.serve" in cmd:
            addresses = re.findall(r"--address (\S+)", cmd)
            m = re.search(r"-(\d+)$", addresses[0]) if addresses else None
            found[int(m[1]) if m and len(addresses) == 1 else "gather"] = pid
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# --------------------------------------------------------------------------- outputs
def _ipi_last_step(run: Path):
    try:
        with open(run / "sim.out", "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 4096))
            lines = fh.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines[1:] if len(lines) > 1 else lines):
        words = line.split()
        if words and not line.startswith("#") and len(words) >= 6:
            try:
                return int(float(words[0]))
            except ValueError:
                pass
    return None


def _lammps_last_step(workdir: Path):
    try:
        with open(workdir / "lammps.out", "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            lines = fh.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines[:-1]):  # the last line may be cut
        words = line.split()
        if len(words) > 5 and words[0].isdigit():
            try:
                [float(w) for w in words]
            except ValueError:
                continue
            return int(words[0])
    return None


def ipi_outputs(run: Path) -> dict:
    """Steps (with repeats) of sim.out and of the trajectory's frames; potential (eV) per step."""
    steps, energy = [], {}
    for line in (run / "sim.out").read_text().splitlines():
        words = line.split()
        if not words or line.startswith("#"):
            continue
        try:
            step, pot = int(float(words[0])), float(words[5])
        except (ValueError, IndexError):
            continue
        steps.append(step)
        energy.setdefault(step, pot)
    frames = [
        int(line.split("Step:")[1].split()[0])
        for line in (run / "sim.pos_0.extxyz").read_text().splitlines()
        if "Step:" in line
    ]
    return {"rows": steps, "frames": frames, "energy": energy}


def lammps_outputs(workdir: Path, dump: str) -> dict:
    """Thermo rows of every run block of log.lammps, the dump's frames, PotEng per step."""
    steps, energy, columns = [], {}, None
    for line in (workdir / "log.lammps").read_text().splitlines():
        words = line.split()
        if words[:1] == ["Step"]:
            columns = words
            continue
        if columns is None:
            continue
        if line.startswith("Loop time") or len(words) != len(columns):
            if line.startswith("Loop time"):
                columns = None
            continue
        try:
            values = [float(w) for w in words]
        except ValueError:
            continue
        step = int(values[0])
        steps.append(step)
        energy.setdefault(step, values[columns.index("PotEng")])
    lines = (workdir / dump).read_text().splitlines()
    frames = [int(lines[i + 1]) for i, line in enumerate(lines[:-1]) if line.startswith("ITEM: TIMESTEP")]
    return {"rows": steps, "frames": frames, "energy": energy}


def _counts(found: list, expected: list) -> tuple[int, int]:
    """(expected steps missing, extra occurrences of steps)."""
    return len(set(expected) - set(found)), len(found) - len(set(found))


def compare(out: dict, ref: dict, expected: list) -> dict:
    lost_rows, dup_rows = _counts(out["rows"], expected)
    lost_frames, dup_frames = _counts(out["frames"], expected)
    common = sorted(set(out["energy"]) & set(ref["energy"]))
    e = np.array([out["energy"][s] for s in common])
    r = np.array([ref["energy"][s] for s in common])
    rel = np.abs(e - r) / np.abs(r) if len(common) else np.array([np.nan])
    return {
        "steps_lost": max(lost_rows, lost_frames),
        "steps_duplicated": max(dup_rows, dup_frames),
        "lost_rows": lost_rows,
        "lost_frames": lost_frames,
        "duplicated_rows": dup_rows,
        "duplicated_frames": dup_frames,
        "steps_compared": len(common),
        "max_rel_energy_difference": float(rel.max()),
    }


def _events(folder: Path) -> list:
    path = folder / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- one launch
class Launch:
    """One launcher process, watched: wall time, when its first and last new step appeared."""

    def __init__(self, cmd, log: Path, last_step):
        self.last_step = last_step
        self.start_step = last_step()
        self.t0 = time.perf_counter()
        self.proc = _start(cmd, log)
        self.first_row_t = None
        self.step = self.start_step
        self._distinct = 0

    def poll(self):
        step = self.last_step()
        if step is not None and step != self.step:
            # start-up ends at the second new step value seen (the first may be a stale or cut row)
            self._distinct += 1
            if self.first_row_t is None and self._distinct >= 2:
                self.first_row_t = time.perf_counter()
            self.step = step
        return self.proc.poll()

    def wait_step(self, step: int, timeout: float) -> bool:
        """Until the outputs reach ``step``; False when the launcher exited first."""
        end = time.perf_counter() + timeout
        while time.perf_counter() < end:
            if self.poll() is not None:
                return False
            if self.step is not None and self.step >= step:
                return True
            time.sleep(POLL)
        raise TimeoutError(f"no step {step} after {timeout:.0f} s (at {self.step})")

    def wait(self, timeout: float) -> int:
        end = time.perf_counter() + timeout
        while self.poll() is None:
            if time.perf_counter() > end:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                raise TimeoutError(f"the launcher ran past {timeout:.0f} s")
            time.sleep(POLL)
        self.poll()
        self.wall = time.perf_counter() - self.t0
        return self.proc.returncode

    def summary(self) -> dict:
        return {
            "exit": self.proc.returncode,
            "wall_s": round(self.wall, 3),
            "start_step": self.start_step,
            "startup_s": round(self.first_row_t - self.t0, 3) if self.first_row_t else None,
            "last_step": self.step,
        }


# --------------------------------------------------------------------------- the campaign
class Campaign:
    def __init__(self, args, work: Path):
        self.args, self.work = args, work
        self.rng = np.random.default_rng(args.seed)
        self.data = {
            "machine": machine(),
            "seed": args.seed,
            "groups": {},
            "rows": [],
        }
        self.t_start = time.perf_counter()

    # -- bookkeeping ------------------------------------------------------------------------
    def draw(self, n: int, lo: int, hi: int) -> list[int]:
        """n injection steps, one uniform in each of n equal parts of [lo, hi)."""
        edges = np.linspace(lo, hi, n + 1).astype(int)
        return [int(self.rng.integers(a, b)) for a, b in zip(edges[:-1], edges[1:])]

    def add(self, row: dict) -> None:
        self.data["rows"].append(row)
        self.save()
        print(
            f"fault_campaign: {row['group']} | {row['fault']} | injected {row['injected']} | "
            f"survived {row['survived']} | lost {row.get('steps_lost')} | "
            f"dup {row.get('steps_duplicated')} | "
            f"extra {row.get('extra_wall_s')} s | dE {row.get('max_rel_energy_difference')}",
            flush=True,
        )

    def save(self) -> None:
        self.data["campaign_wall_s"] = round(time.perf_counter() - self.t_start, 1)
        self.data["machine"]["load_average_now"] = os.getloadavg()[0]
        write("fault_campaign", self.data, markdown(self.data))

    def failed_row(self, group, fault, injected, error: Exception, **extra) -> None:
        self.add(
            {
                "group": group,
                "fault": fault,
                "injected": injected,
                "survived": f"0/{injected}",
                "completed": False,
                "error": f"{type(error).__name__}: {error}",
                **extra,
            }
        )

    # -- generic scenario -------------------------------------------------------------------
    def reference(self, group: str, cmd: list, folder: Path, last_step, read, expected, timeout) -> dict:
        launch = Launch(cmd, folder.parent / f"{folder.name}.log", last_step)
        rc = launch.wait(timeout)
        if rc != 0:
            raise RuntimeError(f"{group}: the reference run failed (exit {rc}); see {folder}.log")
        out = read(folder)
        s = launch.summary()
        per_step = (launch.wall - (s["startup_s"] or 0)) / len(expected)
        ref = {"wall_s": s["wall_s"], "startup_s": s["startup_s"], "s_per_step": round(per_step, 5)}
        ref.update({k: v for k, v in compare(out, out, expected).items() if k.startswith("steps_")})
        self.data["groups"][group]["reference"] = ref
        self.save()
        return {"out": out, **ref}

    def scenario(
        self,
        group: str,
        fault: str,
        cmd: list,
        resume_cmd: list | None,
        folder: Path,
        last_step,
        read,
        expected: list,
        ref: dict,
        targets: list[int],
        inject,
        timeout: float,
        expect_stop_exit=None,
    ) -> None:
        """One run, ``len(targets)`` injections: wait for each target step, ``inject(launch)``;
        when the launcher then exits (a stop), continue with ``resume_cmd``."""
        log = folder.parent / f"{folder.name}.log"
        launches, injections, t0 = [], [], time.perf_counter()
        launch = Launch(cmd, log, last_step)
        launches.append(launch)
        for target in targets:
            if not launch.wait_step(target, timeout):
                raise RuntimeError(
                    f"the launcher exited ({launch.proc.returncode}) before step {target}; see {log}"
                )
            info = inject(launch)
            info.update({"target_step": target, "step_seen": launch.step})
            injections.append(info)
            if resume_cmd is not None:
                rc = launch.wait(120)
                info["stop_exit"] = rc
                info["step_at_stop"] = last_step()
                after = getattr(self, "_after_stop", None)
                if after:
                    info.update(after(folder))
                launch = Launch(resume_cmd, log, last_step)
                launches.append(launch)
        rc = launch.wait(timeout)
        wall = time.perf_counter() - t0
        out = read(folder)
        cmp_ = compare(out, ref["out"], expected)
        events = _events(folder)
        kinds = [e["event"] for e in events]
        for launch in launches:
            if not hasattr(launch, "wall"):
                launch.wall = float("nan")
        # how each injection was survived
        survived = 0
        for i, info in enumerate(injections):
            if resume_cmd is None:
                ok = rc == 0  # restarted in the run; the run finished
            else:
                stop_ok = expect_stop_exit is None or info["stop_exit"] in expect_stop_exit
                nxt = launches[i + 1]
                ok = stop_ok and (nxt.proc.returncode == 0 or (nxt.step or -1) > (nxt.start_step or -1))
            info["survived"] = bool(ok)
            survived += ok
        resumes = [e for e in events if e["event"] == "resume"]
        redone = 0
        if resume_cmd is not None:
            for info, event in zip(injections, resumes):
                info["resumed_at_step"] = event.get("step")
                redone += max(0, (info.get("step_at_stop") or 0) - (event.get("step") or 0))
        row = {
            "group": group,
            "fault": fault,
            "injected": len(targets),
            "survived": f"{survived}/{len(targets)}",
            "completed": rc == 0 and cmp_["steps_lost"] == 0,
            "final_exit": rc,
            **cmp_,
            "wall_s": round(wall, 2),
            "extra_wall_s": round(wall - ref["wall_s"], 2),
            "launches": [launch.summary() for launch in launches],
            "injections": injections,
            "steps_redone": redone,
            "resume_steps": [e.get("step") for e in resumes],
            "events": {k: kinds.count(k) for k in dict.fromkeys(kinds)},
            "event_log": events[-30:],
        }
        # the extra wall time, explained: new launches' start-up, steps computed again
        startups = [launch.summary()["startup_s"] or 0.0 for launch in launches[1:]]
        row["explained_s"] = {
            "relaunch_startup_s": round(sum(startups), 2),
            "steps_redone_s": round(redone * ref["s_per_step"], 2),
            "rest_s": round(wall - ref["wall_s"] - sum(startups) - redone * ref["s_per_step"], 2),
        }
        self.add(row)

    # -- i-PI ------------------------------------------------------------------------------
    def ipi_group(self, group: str, options: list, steps: int, plan: dict, timeout: float) -> None:
        work = self.work / group
        work.mkdir()
        expected = list(range(steps + 1))
        self.data["groups"][group] = {
            "engine": "i-PI",
            "command": "mlip-run " + " ".join(map(str, options)),
            "steps": steps,
        }
        read = ipi_outputs
        try:
            ref = self.reference(
                group,
                [MLIP_RUN, *options, "--out", work / "reference"],
                work / "reference",
                lambda: _ipi_last_step(work / "reference"),
                read,
                expected,
                timeout,
            )
        except Exception as error:  # noqa: BLE001 - reported in the results
            self.failed_row(group, "reference run", 0, error)
            return
        lo, hi = plan.get("window", (100, steps - 150))

        def kill_server(launch):
            pid = _ipi_children(launch.proc.pid)["server"]
            os.kill(pid, signal.SIGKILL)
            return {"signal": "SIGKILL", "pids": {"server": pid}}

        def stop_server(launch):
            pid = _ipi_children(launch.proc.pid)["server"]
            os.kill(pid, signal.SIGSTOP)
            return {"signal": "SIGSTOP", "pids": {"server": pid}}

        def term_launcher(launch):
            os.kill(launch.proc.pid, signal.SIGTERM)
            return {"signal": "SIGTERM", "pids": {"launcher": launch.proc.pid}}

        def kill_all(launch):
            pids = {**_ipi_children(launch.proc.pid), "launcher": launch.proc.pid}
            for pid in pids.values():
                os.kill(pid, signal.SIGKILL)
            return {"signal": "SIGKILL", "pids": pids}

        scenarios = [
            ("kill", "server SIGKILL", kill_server, [], False, None),
            (
                "hang",
                "server SIGSTOP (hang), --stall-timeout 3",
                stop_server,
                ["--stall-timeout", "3"],
                False,
                None,
            ),
            ("term", "launcher SIGTERM, then --resume", term_launcher, [], True, (75,)),
            ("lost", "i-PI + server + launcher SIGKILL (lost node), then --resume", kill_all, [], True, None),
        ]
        for key, fault, inject, extra, resumes, stop_exits in scenarios:
            n = plan.get(key, 0)
            if not n:
                continue
            targets = self.draw(n, lo, hi)
            folder = work / key
            cmd = [MLIP_RUN, *options, *extra, "--out", folder]
            resume_cmd = [MLIP_RUN, "--resume", folder, "--progress", "0"] if resumes else None
            self._after_stop = None
            try:
                self.scenario(
                    group,
                    fault,
                    cmd,
                    resume_cmd,
                    folder,
                    lambda f=folder: _ipi_last_step(f),
                    read,
                    expected,
                    ref,
                    targets,
                    inject,
                    timeout,
                    expect_stop_exit=stop_exits,
                )
            except Exception as error:  # noqa: BLE001 - reported in the results
                self.failed_row(group, fault, n, error, targets=targets)

    # -- LAMMPS ----------------------------------------------------------------------------
    def lammps_group(self, group: str, model: str, molecules: int, steps: int, plan: dict, timeout) -> None:
        from mlip_server.lammps.mpi import leftover_shm_files, shm_files
        from mlip_server.structures import write_water_data

        work = self.work / group
        work.mkdir()
        data = work / f"water-{molecules}.data"
        write_water_data(molecules, data, seed=3)
        deck = lammps_inputs_dir() / "in.water-nvt"
        common = [
            deck,
            "--model",
            model,
            "-e",
            "O",
            "H",
            "--threads",
            "1",
            "--dtype",
            "float64",
            "--quiet",
            "--checkpoint-every",
            "50",
            "--var",
            "data",
            data,
            "--var",
            "steps",
            steps,
            "--var",
            "thermo",
            "1",
            "--var",
            "dump",
            "1",
        ]
        routes = {
            "domain": ["--np", "2", "--decomposition", "domain", "--servers", "2"],
            "gather": ["--np", "1", "--decomposition", "gather"],
        }
        expected = list(range(steps + 1))
        self.data["groups"][group] = {
            "engine": "LAMMPS",
            "command": "mlip-lammps-run " + " ".join(map(str, common)) + " (+ route options)",
            "routes": {k: " ".join(v) for k, v in routes.items()},
            "steps": steps,
            "molecules": molecules,
        }

        def read(folder):
            return lammps_outputs(folder, "water-nvt.lammpstrj")

        refs = {}
        for route in dict.fromkeys(r for r, _ in plan):
            folder = work / f"reference-{route}"
            try:
                refs[route] = self.reference(
                    group,
                    [LAMMPS_RUN, *common, *routes[route], "--out", folder],
                    folder,
                    lambda f=folder: _lammps_last_step(f),
                    read,
                    expected,
                    timeout,
                )
                self.data["groups"][group][f"reference_{route}"] = self.data["groups"][group].pop("reference")
            except Exception as error:  # noqa: BLE001
                self.failed_row(group, f"reference run ({route})", 0, error)
        shm_before = shm_files()

        def kill_rank_server(rank):
            def inject(launch):
                servers = _lammps_servers(launch.proc.pid)
                pid = servers[rank]
                os.kill(pid, signal.SIGKILL)
                return {"signal": "SIGKILL", "pids": {f"server of rank {rank}": pid}}

            return inject

        def term_launcher(launch):
            os.kill(launch.proc.pid, signal.SIGTERM)
            return {"signal": "SIGTERM", "pids": {"launcher": launch.proc.pid}}

        def kill_all(launch):
            tree = _descendants(launch.proc.pid)
            pids = {"launcher": launch.proc.pid, **{str(p): p for p in tree}}
            for pid in pids.values():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return {"signal": "SIGKILL", "pids": {"launcher": launch.proc.pid}, "descendants": tree}

        def after_kill_all(folder):
            # a lost node takes its /dev/shm with it: MPICH's files of the killed ranks go
            time.sleep(0.5)
            removed = sorted(leftover_shm_files(shm_before))
            for path in removed:
                Path(path).unlink(missing_ok=True)
            return {"mpich_shm_files_removed": len(removed)}

        lo, hi = 60, steps - 80
        scenarios = {
            "kill": ("server of rank 1 SIGKILL", kill_rank_server(1), False, None),
            "kill-gather": ("server SIGKILL", kill_rank_server("gather"), False, None),
            "term": ("launcher SIGTERM, then --resume", term_launcher, True, (75,)),
            "lost": (
                "launcher + mpiexec + bridges + servers SIGKILL (lost node), then --resume",
                kill_all,
                True,
                None,
            ),
        }
        for route, key in plan:
            if route not in refs:
                continue
            fault, inject, resumes, stop_exits = scenarios[key]
            if key == "kill-gather":
                key = "kill"
            folder = work / f"{route}-{key}"
            cmd = [LAMMPS_RUN, *common, *routes[route], "--out", folder]
            resume_cmd = [LAMMPS_RUN, "--resume", folder, "--quiet"] if resumes else None
            self._after_stop = after_kill_all if key == "lost" else None
            targets = self.draw(1, lo, hi)
            try:
                self.scenario(
                    group,
                    f"{route}, {route == 'domain' and '2 ranks, 2 servers' or '1 rank'}: {fault}",
                    cmd,
                    resume_cmd,
                    folder,
                    lambda f=folder: _lammps_last_step(f),
                    read,
                    expected,
                    refs[route],
                    targets,
                    inject,
                    timeout,
                    expect_stop_exit=stop_exits,
                )
            except Exception as error:  # noqa: BLE001
                self.failed_row(group, f"{route}: {fault}", 1, error, targets=targets)
            self._after_stop = None

    # -- SLURM -----------------------------------------------------------------------------
    def slurm_group(self, toy: str, steps: int) -> None:
        group = "slurm"
        fault = "SLURM walltime chain (--time=00:01:00, hpc/ipi-cpu-server-gpu.slurm)"
        self.data["groups"][group] = {"engine": "i-PI under SLURM", "steps": steps}
        why = None
        if shutil.which("sbatch") is None:
            why = "not run: no SLURM here (no sbatch)"
        elif not CLUSTER_SCRIPT.exists():
            why = "not run: no SLURM here (no hpc/local-slurm/cluster.sh)"
        elif os.geteuid() != 0:
            why = "not run: no SLURM here (hpc/local-slurm/cluster.sh needs root)"
        if why:
            self.add({"group": group, "fault": fault, "injected": 0, "survived": "-", "not_run": why})
            return
        work = self.work / group
        work.mkdir()
        options = [
            "water-nvt", "--steps", str(steps), "--molecules", "8", "--stride", "1",
            "--model", toy, "--device", "cpu", "--dtype", "float64",
        ]  # fmt: skip
        self.data["groups"][group]["command"] = (
            "mlip-run " + " ".join(options) + " (the template's, one node)"
        )
        expected = list(range(steps + 1))
        try:
            ref = self.reference(
                group,
                [MLIP_RUN, *options, "--progress", "0", "--out", work / "reference"],
                work / "reference",
                lambda: _ipi_last_step(work / "reference"),
                ipi_outputs,
                expected,
                600,
            )
        except Exception as error:  # noqa: BLE001
            self.failed_row(group, fault, 0, error)
            return
        cluster = Path(tempfile.mkdtemp(prefix="mlip-slurm-", dir="/tmp"))
        t_cluster = time.perf_counter()
        started = subprocess.run(
            ["bash", CLUSTER_SCRIPT, "start", cluster], capture_output=True, text=True, timeout=240
        )
        try:
            if started.returncode != 0:
                raise RuntimeError("hpc/local-slurm/cluster.sh start failed: " + started.stderr[-1500:])
            cluster_s = time.perf_counter() - t_cluster
            env = dict(_env())
            for line in (cluster / "env").read_text().splitlines():
                m = re.match(r"export (\w+)=(.*)", line)
                if m:
                    env[m[1]] = m[2]
            name = f"fc-chain-{uuid.uuid4().hex[:6]}"
            env.update(
                PROJECT=str(ROOT), MODEL=toy, STEPS=str(steps), MLIP_ARGS="--stride 1", CHAIN_MAX="8",
                EXPERIMENT="water-nvt", MOLECULES="8", BEADS="", DEVICE="cpu", DTYPE="float64",
                OMP_NUM_THREADS="1",
            )  # fmt: skip
            t0 = time.perf_counter()
            sub = subprocess.run(
                ["sbatch", "--parsable", f"--job-name={name}", "--time=00:01:00", "--ntasks=1",
                 "--cpus-per-task=2", "--output=chain.out", str(IPI_TEMPLATE)],
                cwd=work, env=env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            if sub.returncode != 0:
                raise RuntimeError("sbatch failed: " + sub.stderr)
            first = int(sub.stdout.strip().split(";")[0])
            jobcomp = Path(env["MLIP_SLURM_JOBCOMP"])
            records = []
            end = time.perf_counter() + 8 * 100
            while time.perf_counter() < end:
                records = []
                if jobcomp.exists():
                    for line in jobcomp.read_text().splitlines():
                        fields = dict(re.findall(r"(\w+)=(\S*)", line))
                        if fields.get("Name") == name:
                            records.append(fields)
                queued = subprocess.run(
                    ["squeue", "-h", "-n", name, "-o", "%i"], env=env, capture_output=True, text=True
                ).stdout.strip()
                if records and not queued:
                    break
                time.sleep(1)
            else:
                subprocess.run(["scancel", "-n", name], env=env)
                raise TimeoutError("the chain did not finish in 800 s")
            wall = time.perf_counter() - t0
        finally:
            subprocess.run(["bash", CLUSTER_SCRIPT, "stop", cluster], capture_output=True, timeout=120)
        run = work / f"run-{first}"
        output = (work / "chain.out").read_text()
        records.sort(key=lambda r: int(r["JobId"]))
        out = ipi_outputs(run)
        cmp_ = compare(out, ref["out"], expected)
        events = _events(run)
        kinds = [e["event"] for e in events]
        stops = [e.get("step") for e in events if e["event"] == "stopped"]
        resumes = [e.get("step") for e in events if e["event"] == "resume"]
        jobs_ok = all((r.get("JobState"), r.get("ExitCode")) == ("COMPLETED", "0:0") for r in records)
        done = output.rstrip().endswith(f"the run is done ({run})")
        n = len(records) - 1
        row = {
            "group": group,
            "fault": fault,
            "injected": n,
            "survived": f"{n if (jobs_ok and done) else 0}/{n}",
            "completed": bool(jobs_ok and done and cmp_["steps_lost"] == 0),
            **cmp_,
            "wall_s": round(wall, 2),
            "extra_wall_s": round(wall - ref["wall_s"], 2),
            "cluster_start_s": round(cluster_s, 1),
            "jobs": [
                {k: r.get(k) for k in ("JobId", "JobState", "ExitCode", "StartTime", "EndTime", "TimeLimit")}
                for r in records
            ],
            "stops_at_steps": stops,
            "resume_steps": resumes,
            "steps_redone": sum(0 for _ in stops),  # a clean stop writes RESTART at its step
            "events": {k: kinds.count(k) for k in dict.fromkeys(kinds)},
            "chain_output_tail": output[-1500:],
        }
        if n < 1:
            row["note"] = "the run finished within the first job: no walltime stop happened"
        self.add(row)


# --------------------------------------------------------------------------- report
def _fmt(v, spec="{:.2g}"):
    if v is None:
        return "-"
    if isinstance(v, float):
        if np.isnan(v):
            return "-"
        return spec.format(v)
    return str(v)


def markdown(data: dict) -> str:
    m = data["machine"]
    rows = []
    for r in data["rows"]:
        if r.get("not_run"):
            rows.append(f"| {r['group']} | {r['fault']} | - | - | - | - | - | {r['not_run']} |")
            continue
        if r.get("error"):
            rows.append(
                f"| {r['group']} | {r['fault']} | {r['injected']} | {r['survived']} | - | - | - | "
                f"failed: {r['error'][:400]} |"
            )
            continue
        de = r.get("max_rel_energy_difference")
        rows.append(
            f"| {r['group']} | {r['fault']} | {r['injected']} | {r['survived']} | {r['steps_lost']} | "
            f"{r['steps_duplicated']} | {r['extra_wall_s']:+.1f} | {_fmt(de, '{:.1e}')} |"
        )
    groups = []
    for name, g in data["groups"].items():
        refs = {k: v for k, v in g.items() if k.startswith("reference")}
        ref_text = "; ".join(
            f"{k.replace('reference_', '').replace('reference', 'reference')}: {v['wall_s']:.1f} s "
            f"({v['startup_s'] or 0:.1f} s to the first step, {1e3 * v['s_per_step']:.1f} ms/step)"
            for k, v in refs.items()
        )
        groups.append(
            f"- **{name}** ({g['engine']}, {g['steps']} steps): `{g.get('command', '')}`; {ref_text}"
        )
    draws = []
    for r in data["rows"]:
        if r.get("injections"):
            draws.append(
                f"{r['group']} / {r['fault'].split(',')[0]}: "
                + ", ".join(f"{i['target_step']} ({i['step_seen']})" for i in r["injections"])
            )
    extra = []
    for r in data["rows"]:
        e = r.get("explained_s")
        if e:
            extra.append(
                f"| {r['group']} | {r['fault']} | {r['extra_wall_s']:+.1f} | {len(r['launches']) - 1} | "
                f"{e['relaunch_startup_s']:.1f} | {r['steps_redone']} ({e['steps_redone_s']:.1f} s) | "
                f"{e['rest_s']:+.1f} |"
            )
    return f"""## Fault campaign (`bench/fault_campaign.py`)
Machine: {m["cpu"]}, {m["cores"]} cores, torch {m["torch"]}, {m["date"]}, load average \
{m["load_average_at_start"]:.2f} at the start, {m.get("load_average_now", 0):.2f} at the end; \
campaign wall time {data.get("campaign_wall_s", 0):.0f} s. Every fault is a signal sent to the real \
pids of a run started with the command-line tools (`mlip-run`, `mlip-lammps-run`, and `sbatch` of \
the shipped template); every row is compared with an uninterrupted reference run of the same \
options measured in this campaign (float64, CPU, `--stride 1` / thermo and dump every step). \
Steps lost: expected steps missing from the final outputs (i-PI: `sim.out` rows and trajectory \
`Step:` frames; LAMMPS: thermo rows of `log.lammps` and dump frames); duplicated: extra occurrences \
of a step (the larger of the two files). ΔE: largest relative difference of the potential energy \
per step from the reference. Injection steps drawn with `numpy.random.default_rng({data["seed"]})`, \
one uniform draw in each equal part of the run's window per injection. Raw numbers, events and \
per-launch timings in `bench/results/fault_campaign.json`.

| group | fault | injected | survived | steps lost | steps duplicated | extra wall (s) | max rel. ΔE |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Groups and their reference runs:
{chr(10).join(groups)}

Injection steps (drawn, and in brackets the step the outputs showed when the signal went): \
{"; ".join(draws)}.

Where the extra wall time goes (relaunches' start-up until their first new step; steps computed \
again after a resume, at the reference's time per step; the rest: detection of the fault, the \
restarted server's start-up and reconnection for in-run restarts, a stopped launcher's clean stop):

| group | fault | extra (s) | relaunches | their start-up (s) | steps redone | rest (s) |
|---|---|---|---|---|---|---|
{chr(10).join(extra)}

Notes. Extra wall time is the difference of two single runs (the fault run and its reference) \
on a 2-core machine shared with other work (load averages above): its noise is several seconds \
and lands in the "rest" column; a negative value means the fault run happened to be faster than \
its reference. LAMMPS potential energies come from thermo rows printed with `%.10g` (the deck's \
format), so a ΔE of 0 there means below about 1e-10; i-PI's come from `sim.out`. A SIGTERMed run \
keeps the steps it made between the signal and its clean stop (nothing is redone); a lost node \
redoes the steps since its last checkpoint (every 50 steps), cut from the outputs at the resume. \
For the LAMMPS lost node, MPICH's `/dev/shm` files of the killed ranks are removed before the \
resume, as a lost node takes its `/dev/shm` with it (count in the JSON).
"""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=26)
    p.add_argument("--groups", nargs="+", default=["toy", "lammps", "pet", "slurm"])
    p.add_argument("--toy-steps", type=int, default=1500)
    p.add_argument("--pet-steps", type=int, default=300)
    p.add_argument("--pet-molecules", type=int, default=32)
    p.add_argument("--lammps-steps", type=int, default=600)
    p.add_argument("--lammps-molecules", type=int, default=64)
    p.add_argument("--slurm-steps", type=int, default=24000)
    p.add_argument("--keep", action="store_true", help="keep the run folders (printed)")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="fault-campaign-"))
    print(f"fault_campaign: run folders in {work}", flush=True)
    from mlip_server.training.toy_models import export, water_toy

    toy = str(export(water_toy(anisotropy=0.02), work / "water-toy.pt"))
    campaign = Campaign(args, work)
    campaign.data["models"] = {
        "toy": "mlip_server.training.toy_models.water_toy(anisotropy=0.02) "
        "(Morse pairs + a small MLP term; a toy)",
        "pet": "models/water-pet.pt (shipped PET-like water model)",
    }
    common = ["--stride", "1", "--set", "checkpoint=50", "--dtype", "float64", "--progress", "0"]
    try:
        for group in args.groups:
            if group == "toy":
                campaign.ipi_group(
                    "ipi-toy",
                    ["water-nvt", "--model", toy, "--molecules", "8", "--steps", args.toy_steps, *common],
                    args.toy_steps,
                    {"kill": 3, "hang": 1, "term": 2, "lost": 2},
                    timeout=300,
                )
            elif group == "pet":
                campaign.ipi_group(
                    "ipi-pet",
                    ["water-nvt", "--model", shipped_model(), "--molecules", args.pet_molecules,
                     "--steps", args.pet_steps, *common],
                    args.pet_steps,
                    {"kill": 1, "term": 1, "lost": 1, "window": (60, args.pet_steps - 60)},
                    timeout=400,
                )  # fmt: skip
            elif group == "lammps":
                campaign.lammps_group(
                    "lammps-toy",
                    toy,
                    args.lammps_molecules,
                    args.lammps_steps,
                    [("domain", "kill"), ("gather", "kill-gather"), ("domain", "term"), ("domain", "lost")],
                    timeout=300,
                )
            elif group == "slurm":
                campaign.slurm_group(toy, args.slurm_steps)
    finally:
        campaign.save()
        print(markdown(campaign.data))
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
