"""Stop at a step boundary with a checkpoint: when the scheduler warns of preemption or the time limit (so the job
can requeue), or when the user presses Ctrl-C (so the run can continue later with resume=auto).

`slurm/fixmatch.sbatch` exports STELLAR_STOP_FILE and, on SLURM's warning signal (`--signal=B:USR1@180`), creates
that file; STOP_FILE.stopped then tells the batch script to requeue the job. A file, not a signal to the ranks:
signals do not pass through srun, `bash -c` and the launcher to the training processes, and a file works on every
node of a shared filesystem. Ctrl-C (SIGINT) sets a flag; a second Ctrl-C quits at once.

Cost per step: nothing. One process reads its Ctrl-C flag after every step and looks for the file every `every`
steps (train.log_every_steps); several processes agree with one all-reduce every `every` steps (where the loop
synchronises anyway), so that all of them stop after the same step.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from pathlib import Path

import torch

from ..core import dist
from ..core.files import write_atomically

STOP_FILE_ENV = "STELLAR_STOP_FILE"


class StopRequest:
    def __init__(self, device: torch.device, every: int = 1):
        path = os.environ.get(STOP_FILE_ENV)
        self.path, self.device, self.every = (Path(path) if path else None), device, max(1, every)
        self.interrupted = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_interrupt)

    def _on_interrupt(self, signum, frame) -> None:
        if self.interrupted:  # the second Ctrl-C: quit now
            raise KeyboardInterrupt
        self.interrupted = True
        if dist.is_main():
            print("\nCtrl-C: stopping after this step with a checkpoint (Ctrl-C again to quit at once)",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def __call__(self, step: int) -> bool:
        """True on every rank, after the same step, once any rank was asked to stop."""
        boundary = step % self.every == 0
        if dist.world_size() == 1:  # its own flag: free to read after every step; the file at the boundary
            return self.interrupted or (boundary and self.path is not None and self.path.exists())
        if not boundary:
            return False
        local = self.interrupted or (self.path is not None and self.path.exists())
        return dist.all_reduce_max(torch.tensor([float(local)], device=self.device)).item() > 0

    def confirm(self, step: int, checkpoint: Path) -> None:
        """Tell the batch script that the ranks stopped early and saved `checkpoint`: it requeues the job."""
        if self.path is not None and not self.interrupted:
            marker = Path(f"{self.path}.stopped")
            write_atomically(marker, f"{step} {checkpoint}\n")


def resume_command() -> str:
    """The command that continues this run: the one that started it, with resume=auto."""
    args = shlex.join([arg for arg in sys.argv[1:] if not arg.startswith("resume=")] + ["resume=auto"])
    program = sys.argv[0]  # the module's __main__.py, the stellar-dist script or a script such as launch/train.py
    module = program.endswith(os.path.join("stellar_dist", "__main__.py"))
    if "ACCELERATE_MIXED_PRECISION" in os.environ or "LOCAL_RANK" in os.environ:  # started by accelerate launch
        target = "-m stellar_dist" if module or Path(program).name == "stellar-dist" else shlex.quote(program)
        return f"accelerate launch <the same launch options> {target} {args}"
    if Path(program).name == "stellar-dist":
        return f"stellar-dist {args}"
    return f"python {'-m stellar_dist' if module else shlex.quote(program)} {args}"


class Stopped(Exception):
    """The run stopped early on request, after saving `checkpoint` at `step`."""

    def __init__(self, step: int, checkpoint: Path, by_user: bool = False):
        who = "on Ctrl-C" if by_user else "on the scheduler's request"
        super().__init__(f"stopped at step {step} {who}; checkpoint {checkpoint}")
        self.step, self.checkpoint, self.by_user = step, checkpoint, by_user
