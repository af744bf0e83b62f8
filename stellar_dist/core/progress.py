"""Progress of a long command: a tqdm bar on a terminal; in a log file (SLURM output, nohup, CI) a plain line at
most every `every_s` seconds and at the end, with the rate and the time left, instead of tqdm's carriage-return
runs that fill a log with one unreadable line.

    with progress(total, "pack", "img") as bar:
        bar.update(n)
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class PlainProgress:
    """tqdm's update / set_postfix / close for a log file: `pack: 500/1500 img (33%), 41 img/s, 24 s left`."""

    def __init__(self, total: int, desc: str, unit: str, every_s: float = 10.0):
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.n, self.started, self.printed, self.postfix = 0, time.perf_counter(), time.perf_counter(), ""

    def update(self, count: int = 1) -> None:
        self.n += count
        if time.perf_counter() - self.printed >= self.every_s and self.n < self.total:
            self._line()

    def set_postfix(self, *args, **kwargs) -> None:  # the rate is in the line already
        pass

    def _line(self) -> None:
        elapsed = time.perf_counter() - self.started
        rate = self.n / max(elapsed, 1e-9)
        left = f", {(self.total - self.n) / rate:.0f} s left" if rate > 0 and self.n < self.total else ""
        share = f" ({self.n / self.total:.0%})" if self.total else ""
        print(f"{self.desc}: {self.n}/{self.total} {self.unit}{share}, {rate:.0f} {self.unit}/s, {elapsed:.0f} s"
              f"{left}", file=sys.stderr, flush=True)
        self.printed = time.perf_counter()

    def close(self) -> None:
        if self.n:
            self._line()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(total: int, desc: str, unit: str, enabled: bool = True):
    """A bar on a terminal, plain lines in a log file, nothing when not `enabled` (another rank)."""
    if not enabled:
        return tqdm(total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)
    return PlainProgress(total, desc, unit)
