"""Progress display (mlip_server.progress) and closing lines (ipi.summary, lammps.summary) on
hand-made step/time sequences and files: the rate and time-left arithmetic, the formatting, the
batch lines and the live bar."""

import io

import pytest

from mlip_server.ipi import summary as ipi_summary
from mlip_server.lammps import summary as lammps_summary
from mlip_server.progress import (
    Meter,
    Progress,
    around_bars,
    closing_text,
    format_duration,
    format_rate,
    status_text,
)


def _meter(samples, total=100):
    m = Meter(total)
    for step, t in samples:
        m.add(step, t)
    return m


def test_rate_is_the_mean_since_the_first_step_seen_and_time_left_counts_down():
    m = _meter([(0, 10.0), (0, 10.5), (10, 11.0), (20, 12.0)])
    assert m.steps_done == 20
    assert m.seconds_per_step() == pytest.approx(0.1)  # 2 s for 20 steps; start-up before t=10 left out
    assert m.seconds_left() == pytest.approx(8.0)  # 80 steps left
    m.add(20, 12.5)  # no new step for 0.5 s: the time left shrinks, the rate stays
    assert m.seconds_per_step() == pytest.approx(0.1)
    assert m.seconds_left() == pytest.approx(7.5)
    m.add(5, 20.0)  # a step back (the engine restarted from a checkpoint): measured afresh
    assert m.steps_done == 0 and m.seconds_per_step() is None and m.seconds_left() is None


def test_no_rate_before_the_step_moves_and_no_time_left_without_a_total():
    assert _meter([(7, 1.0), (7, 5.0)]).seconds_per_step() is None
    m = _meter([(0, 0.0), (50, 5.0)], total=None)
    assert m.seconds_per_step() == pytest.approx(0.1) and m.seconds_left() is None


def test_format_rate_and_duration():
    assert format_rate(0.0712, 0.5) == "607 ps/day, 0.0712 s/step"  # 0.5 fs × 86400 / 0.0712 s
    assert format_rate(0.01, 2.0) == "17.3 ns/day, 0.01 s/step"  # ns/day from 1 ns/day
    assert format_rate(0.0712) == "0.0712 s/step"  # no timestep: geometry optimisation, replay
    assert format_rate(None, 0.5) == "? s/step"
    assert [format_duration(s) for s in (0.4, 42, 59.6, 199, 3725, 97200)] == [
        "0s",
        "42s",
        "1m 00s",
        "3m 19s",
        "1h 02m",
        "1d 03h",
    ]


def test_status_and_closing_text():
    m = _meter([(0, 0.0), (20, 2.0)])
    assert status_text(m, 0.5) == "step 20/100 (20%), 432 ps/day, 0.1 s/step, 8s left"
    assert status_text(m, 0.5, with_step=False) == "432 ps/day, 0.1 s/step, 8s left"
    assert status_text(_meter([(3, 0.0)], total=None)) == "step 3, ? s/step"
    assert closing_text(4000, 285, 0.0712, 0.5) == "4000 steps in 4m 45s (607 ps/day, 0.0712 s/step)"
    assert closing_text(4, 20.0, None) == "4 steps in 20s (5 s/step)"  # no measured rate: wall per step
    assert closing_text(0, 3.0, None) == "0 steps in 3s"


def test_batch_lines_every_interval_when_the_step_moved_and_one_for_the_last_step():
    clock = iter([0.0, 4.0, 10.0, 12.0, 15.0, 21.0])
    out = io.StringIO()
    p = Progress(100, timestep_fs=0.5, out=out, interval=10, clock=lambda: next(clock), stamp=lambda: "T")
    for step in (0, 40, 50, 50, 60, 70):  # at t = 0, 4, 10, 12, 15, 21
        p.update(step)
    p.close()
    assert out.getvalue().splitlines() == [
        "[T] step 50/100 (50%), 216 ps/day, 0.2 s/step, 10s left",  # t=10: one interval after t=0
        "[T] step 70/100 (70%), 144 ps/day, 0.3 s/step, 9s left",  # t=21 (t=12: unmoved, 15: too soon)
    ]
    quiet = io.StringIO()
    q = Progress(100, out=quiet, interval=0, clock=iter([0.0, 30.0]).__next__)
    q.update(0)
    q.update(30)
    q.close()
    assert quiet.getvalue() == "" and q.meter.seconds_per_step() == pytest.approx(1.0)  # measured, not shown


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_live_bar_on_a_terminal_and_printed_lines_above_it():
    term = _Terminal()
    clock = iter([0.0, 2.0])
    p = Progress(100, timestep_fs=0.5, out=term, interval=10, clock=lambda: next(clock))
    p.update(0)
    p.update(20)
    assert "step 20/100 |" in term.getvalue() and "432 ps/day, 0.1 s/step, 8s left" in term.getvalue()
    stream = around_bars(term)
    assert around_bars(io.StringIO()).__class__ is io.StringIO  # a log: the stream itself
    before = len(term.getvalue())
    print("mlip-run: an event", file=stream, flush=True)  # written in two calls by print
    written = term.getvalue()[before:]
    assert "\rmlip-run: an event\n" in written  # the bar cleared first, the line whole
    assert written.rstrip().endswith("8s left")  # then the bar drawn again below it
    p.close()


def test_ipi_headline_next_command_and_timestep(tmp_path):
    (tmp_path / "init.xyz").write_text("3\n\nO 0 0 0\nH 1 0 0\nH 0 1 0\n")
    (tmp_path / "sim.out").write_text(
        "# column   1     --> step : ...\n"
        "# column   2     --> time{picosecond} : ...\n"
        "# column   3     --> conserved{electronvolt} : ...\n"
        "# column   4     --> temperature{kelvin} : ...\n"
        "0 0.0 -10.000 290.0\n1 0.5 -9.997 300.0\n2 1.0 -9.994 310.0\n"
    )
    for bead in range(2):
        (tmp_path / f"sim.pos_{bead}.extxyz").write_text("")
    assert ipi_summary.headline(tmp_path) == "mean T 300.0 K, conserved drift +2 meV/atom/ps"  # 6 meV/3/1 ps
    command = ipi_summary.next_command(tmp_path, "sim", "water-pimd")
    assert command == f"mlip-analyse all {tmp_path} --bead centroid --out {tmp_path / 'analysis'}"
    (tmp_path / "sim.pos_1.extxyz").unlink()  # one positions file (or a centroid file): no --beads
    assert "--beads" not in ipi_summary.next_command(tmp_path, "sim", "water-pimd-rpc-mts")
    assert ipi_summary.next_command(tmp_path, "sim", "molecule-nve").startswith("mlip-analyse symmetry ")
    assert ipi_summary.timestep_fs("<timestep units='femtosecond'>0.25</timestep>") == 0.25
    assert ipi_summary.timestep_fs("<timestep>10</timestep>") == pytest.approx(0.2418884)  # atomic units
    assert ipi_summary.timestep_fs("<motion mode='minimize'/>") is None


def test_geometry_optimisation_headline_is_the_last_potential(tmp_path):
    (tmp_path / "sim.out").write_text(
        "# column   1     --> step : ...\n# column   2     --> potential{electronvolt} : ...\n"
        "0 -5.0\n1 -5.5\n2 -5.75\n"
    )
    assert ipi_summary.headline(tmp_path) == "potential -5.750000 eV (-0.750000 eV from the start)"


def test_lammps_mean_temperature_and_next_command(tmp_path):
    (tmp_path / "log.lammps").write_text(
        "units metal\n   Step   Time   Temp   PotEng\n"
        "  0  0  290  -1\n  10  0.005  310  -1\nLoop time of 1.0 on 1 procs\n"
        "   Step   Time   Temp   PotEng\n  10  0.005  310  -1\n  20  0.01  330  -1\nWARNING: ...\n"
        "Loop time of 1.0 on 1 procs\n"
    )
    assert list(lammps_summary.thermo_column(tmp_path / "log.lammps", "Temp")) == [290, 310, 310, 330]
    assert lammps_summary.headline(tmp_path) == "mean T 310.0 K"
    frame = "ITEM: TIMESTEP\n{}\nITEM: NUMBER OF ATOMS\n1\nITEM: ATOMS id type x y z\n1 1 0 0 0\n"
    (tmp_path / "water-nvt.lammpstrj").write_text(frame.format(0) + frame.format(10))
    assert lammps_summary.next_command(tmp_path, ["O", "H"], 0.5) == (
        f"mlip-analyse all {tmp_path / 'water-nvt.lammpstrj'} --types O H --timestep 5 "
        f"--out {tmp_path / 'analysis'}"
    )
