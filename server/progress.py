"""Progress of a run as the tools of the field show it: step N of M, the rate, the time left.

One module for ``mlip-run``, ``mlip-lammps-run`` and ``make demo``. A caller feeds
:class:`Progress` the last step its engine wrote (as often as it likes, e.g. every second);
on a terminal it draws a live tqdm bar, in a batch log (not a terminal) it prints one
timestamped line every ``interval`` seconds when the step moved, and one for the last step::

      step 1200/4000 |█████████▌                      |  30%, 607 ps/day, 0.0712 s/step, 3m 19s left
    [2026-12-07 01:02:03] step 1200/4000 (30%), 607 ps/day, 0.0712 s/step, 3m 19s left

The rate is the mean since the first step this launch saw (start-up, model loading and the
steps before it are left out): s/step, and simulated time per day (ps/day, or ns/day from
1 ns/day) when the timestep is known (none for geometry optimisations and replays). The time
left is the remaining steps at that rate, less the time since the last step moved.
:func:`around_bars` wraps a stream so that lines printed while a bar is live (events, echoed
engine output) appear above it instead of inside it.
"""

from __future__ import annotations

import sys
import time

__all__ = [
    "Meter",
    "Progress",
    "around_bars",
    "format_duration",
    "format_rate",
    "status_text",
    "closing_text",
]


class Meter:
    """Steps seen over time: the mean seconds per step since the first step seen, and the time left.

    Parameters
    ----------
    total : int or None
        The step the run ends at (None: unknown, no time left).
    """

    def __init__(self, total: int | None):
        self.total = total
        self.first: tuple[int, float] | None = None  # (step, time) of the first sample
        self.moved: tuple[int, float] | None = None  # (step, time) of the last sample that moved
        self.step: int | None = None
        self.now: float | None = None

    def add(self, step: int, now: float) -> None:
        """Records that the engine's last written step is ``step`` at time ``now`` (s)."""
        if self.first is None or step < self.moved[0]:  # a step back: the engine restarted there
            self.first = self.moved = (step, now)
        elif step != self.moved[0]:
            self.moved = (step, now)
        self.step, self.now = step, now

    @property
    def steps_done(self) -> int:
        """Steps made since the first sample."""
        return 0 if self.first is None else self.moved[0] - self.first[0]

    def seconds_per_step(self) -> float | None:
        """Mean wall seconds per step since the first sample (None before the step moved)."""
        if not self.steps_done:
            return None
        return (self.moved[1] - self.first[1]) / self.steps_done

    def seconds_left(self) -> float | None:
        """The remaining steps at the mean rate, less the time since the last step moved (None:
        no rate yet or no total)."""
        rate = self.seconds_per_step()
        if rate is None or self.total is None:
            return None
        return max(0.0, (self.total - self.moved[0]) * rate - (self.now - self.moved[1]))


def format_duration(seconds: float) -> str:
    """``42s``, ``3m 19s``, ``2h 05m``, ``3d 04h`` (rounded to the shown unit)."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    m = int(round(seconds / 60))
    if m < 24 * 60:
        return f"{m // 60}h {m % 60:02d}m"
    h = int(round(seconds / 3600))
    return f"{h // 24}d {h % 24:02d}h"


def format_rate(seconds_per_step: float | None, timestep_fs: float | None = None) -> str:
    """``607 ps/day, 0.0712 s/step`` (simulated time per day first when the timestep is known;
    ns/day from 1 ns/day, else ps/day); ``? s/step`` without a rate."""
    if seconds_per_step is None:
        return "? s/step"
    per_step = f"{seconds_per_step:.3g} s/step"
    if not timestep_fs or seconds_per_step <= 0:
        return per_step
    ps_per_day = timestep_fs * 1e-3 * 86400.0 / seconds_per_step
    simulated = f"{ps_per_day / 1e3:.3g} ns/day" if ps_per_day >= 1e3 else f"{ps_per_day:.3g} ps/day"
    return f"{simulated}, {per_step}"


def status_text(meter: Meter, timestep_fs: float | None = None, with_step: bool = True) -> str:
    """``step 1200/4000 (30%), 607 ps/day, 0.0712 s/step, 3m 19s left`` (what is known of it);
    ``with_step=False`` leaves out the step part (the bar shows it)."""
    parts = []
    if with_step:
        if meter.total:
            parts.append(f"step {meter.step}/{meter.total} ({100.0 * meter.step / meter.total:.0f}%)")
        else:
            parts.append(f"step {meter.step}")
    parts.append(format_rate(meter.seconds_per_step(), timestep_fs))
    left = meter.seconds_left()
    if left is not None:
        parts.append(f"{format_duration(left)} left")
    return ", ".join(parts)


def closing_text(steps: int, wall_s: float, seconds_per_step: float | None, timestep_fs=None) -> str:
    """``4000 steps in 4m 45s (607 ps/day, 0.0712 s/step)``: the closing line's headline.
    Without a measured rate the wall time per step (start-up included) stands for it."""
    if seconds_per_step is None and steps > 0:
        seconds_per_step = wall_s / steps
    rate = f" ({format_rate(seconds_per_step, timestep_fs)})" if steps > 0 else ""
    return f"{steps} step{'s' if steps != 1 else ''} in {format_duration(wall_s)}{rate}"


class Progress:
    """Shows a run's progress on ``out``: a live bar on a terminal, timestamped lines otherwise.

    Parameters
    ----------
    total : int or None
        The run's final step.
    timestep_fs : float, optional
        The (outer) time step in fs, for ps/day or ns/day.
    out : file
        Where to show it (default stdout); a terminal gets the bar (``live`` decides otherwise).
    interval : float
        Seconds between lines in a batch log (0: none; the bar is drawn at most twice a second).
    clock, stamp
        Time sources (for tests): ``clock()`` seconds, ``stamp()`` the line's timestamp text.
    """

    def __init__(
        self,
        total: int | None,
        *,
        timestep_fs: float | None = None,
        out=None,
        interval: float = 10.0,
        live: bool | None = None,
        clock=time.monotonic,
        stamp=None,
    ):
        self.out = _raw(out if out is not None else sys.stdout)
        self.meter = Meter(total)
        self.timestep_fs = timestep_fs
        self.interval = interval
        self.live = _isatty(self.out) if live is None else live
        self.clock = clock
        self.stamp = stamp or (lambda: time.strftime("%Y-%m-%d %H:%M:%S"))
        self.bar = None
        self._printed: tuple[int, float] | None = None

    def update(self, step: int | None) -> None:
        """The engine's last written step now (None: nothing written yet)."""
        if step is None:
            return
        now = self.clock()
        self.meter.add(step, now)
        if self.interval <= 0:
            return  # quiet: the meter still measures the rate for the closing line
        if self.live:
            self._draw()
            return
        if self._printed is None:
            self._printed = (step, now)  # the first line comes one interval later, with a rate
        elif step != self._printed[0] and now - self._printed[1] >= self.interval:
            self._line()

    def _line(self) -> None:
        self._printed = (self.meter.step, self.meter.now)
        print(f"[{self.stamp()}] {status_text(self.meter, self.timestep_fs)}", file=self.out, flush=True)

    def _draw(self) -> None:
        from tqdm import tqdm

        m = self.meter
        if self.bar is None:
            self.bar = tqdm(
                total=m.total,
                initial=m.step,
                desc=status_text(m, self.timestep_fs, with_step=False),
                file=self.out,
                dynamic_ncols=True,
                leave=False,
                mininterval=0.5,
                bar_format="  step {n}/{total} |{bar}| {percentage:3.0f}%, {desc}"
                if m.total
                else "  step {n}, {desc}",
            )
        self.bar.set_description_str(status_text(m, self.timestep_fs, with_step=False), refresh=False)
        self.bar.n = m.step
        self.bar.refresh()

    def close(self) -> None:
        """Removes the bar (the closing line takes its place); a log gets the last step's line
        when the step moved since its last line."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif not self.live and self.interval > 0 and self._printed and self.meter.step != self._printed[0]:
            self._line()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _AroundBars:
    """A text stream whose complete lines are written with the live tqdm bars cleared and then
    redrawn (print writes a line in two calls: they are joined first)."""

    def __init__(self, raw):
        self.raw = raw
        self._pending = ""

    def write(self, text: str) -> int:
        from tqdm import tqdm

        self._pending += text
        if "\n" in self._pending:
            lines, _, self._pending = self._pending.rpartition("\n")
            with tqdm.external_write_mode(file=self.raw):
                self.raw.write(lines + "\n")
                self.raw.flush()
        return len(text)

    def flush(self) -> None:
        self.raw.flush()

    def isatty(self) -> bool:
        return _isatty(self.raw)

    def __getattr__(self, name):
        return getattr(self.raw, name)


def around_bars(stream):
    """``stream`` itself when it is no terminal, else a stream whose lines a live bar never splits."""
    if isinstance(stream, _AroundBars) or not _isatty(stream):
        return stream
    return _AroundBars(stream)


def _raw(stream):
    return stream.raw if isinstance(stream, _AroundBars) else stream


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False
