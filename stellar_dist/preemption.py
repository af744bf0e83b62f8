"""Stop at a step boundary when the scheduler warns of preemption or the time limit, so the job can requeue.

`slurm/fixmatch.sbatch` exports STELLAR_STOP_FILE and, on SLURM's warning signal (`--signal=B:USR1@180`), creates
that file. Every rank looks for it after each step and the ranks agree (one all-reduce of a flag, only when the
variable is set), so all of them stop after the same step; the run then saves a checkpoint and writes
STOP_FILE.stopped, which tells the batch script to requeue the job. A file, not a signal to the ranks: signals
do not pass through srun, `bash -c` and the launcher to the training processes, and a file works on every node
of a shared filesystem (which checkpoints need anyway).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from . import dist

STOP_FILE_ENV = "STELLAR_STOP_FILE"


class StopRequest:
    def __init__(self, device: torch.device):
        path = os.environ.get(STOP_FILE_ENV)
        self.path, self.device = (Path(path) if path else None), device

    def __call__(self) -> bool:
        """True on every rank once any rank saw the stop file (the same answer everywhere)."""
        if self.path is None:
            return False
        seen = torch.tensor([float(self.path.exists())], device=self.device)
        return dist.all_reduce_max(seen).item() > 0

    def confirm(self, step: int, checkpoint: Path) -> None:
        """Tell the batch script that the ranks stopped early and saved `checkpoint`: it requeues the job."""
        if self.path is not None:
            marker = Path(f"{self.path}.stopped")
            marker.write_text(f"{step} {checkpoint}\n")


class Stopped(Exception):
    """The run stopped early on request, after saving `checkpoint` at `step`."""

    def __init__(self, step: int, checkpoint: Path):
        super().__init__(f"stopped at step {step} on the scheduler's request; checkpoint {checkpoint}")
        self.step, self.checkpoint = step, checkpoint
