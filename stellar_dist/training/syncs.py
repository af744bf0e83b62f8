"""Device syncs, counted where they happen: the ops that make the host wait for a GPU, seen at the dispatcher (below
Python, so `torch.tensor(x, device=cuda)`, boolean-mask indexing and `bincount` are seen too, not only `.item()`).

    with SyncCounter(step=lambda: run.step, on_host=(run.ema.n_averaged,)) as syncs:
        train_loop(run)
    print(syncs.by_line())        # {"stellar_dist/algorithms/flexmatch.py:52 nonzero": 8, ...}
    print(syncs.by_step())        # {3: 41, 6: 41}: only the log steps (train.log_every_steps=3) read

On a CPU nothing waits, but the same ops run: the suite counts them per step for every algorithm
(tests/test_syncs.py) and bench/gpu_smoke.py prints them per source line on a GPU. What counts:
- a tensor read on the host (`.item()`, `bool()`, `int()`: aten._local_scalar_dense), `aten.equal`;
- ops whose output size depends on the values (nonzero, masked_select, unique, a boolean-mask index or
  index_put, repeat_interleave without output_size, CUDA bincount, histc without a range);
- a host value made a tensor (`torch.tensor(...)`, `new_tensor`, `as_tensor`, `from_numpy`: aten.lift_fresh),
  which on a GPU is a copy from pageable host memory.
"""

from __future__ import annotations

import traceback
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
ALWAYS = {aten._local_scalar_dense.default, aten.equal.default, aten.nonzero.default, aten.masked_select.default,
          aten._unique2.default, aten.unique_consecutive.default, aten.unique_dim.default, aten.bincount.default,
          aten.repeat_interleave.Tensor, aten.lift_fresh.default, aten.lift_fresh_copy.default}
PACKAGE = str(Path(__file__).resolve().parents[1])
TORCH = str(Path(torch.__file__).resolve().parent)


def _has_bool_index(indices) -> bool:
    return any(isinstance(index, torch.Tensor) and index.dtype == torch.bool for index in indices or ())


def is_sync(func, args, kwargs) -> bool:
    if func in ALWAYS:
        return True
    if func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default):
        return _has_bool_index(args[1] if len(args) > 1 else kwargs.get("indices"))
    if func is aten.histc.default:  # without a range the kernel reads the min and max first
        low, high = (list(args[2:4]) + [0, 0])[:2]
        return low == high
    return False


def _where() -> str:
    """The innermost frame of this package that led here (else the innermost one outside torch), as file:line."""
    frames = [frame for frame in traceback.extract_stack()
              if not frame.filename.startswith(TORCH) and frame.filename != __file__]
    ours = [frame for frame in frames if frame.filename.startswith(PACKAGE)]
    frame = (ours or frames)[-1]
    root = str(Path(PACKAGE).parent) + "/"
    return f"{frame.filename.removeprefix(root)}:{frame.lineno}"


class SyncCounter(TorchDispatchMode):
    """Counts the syncing ops run inside it, by step, source line and op."""

    def __init__(self, step=lambda: 0, on_host: tuple = ()):
        super().__init__()
        self.step = step  # the training step in progress (a callable): counts are kept per step
        self.on_host = on_host  # tensors kept on the host by design (the EMA's counter): reading them waits for nothing
        self.counts: Counter = Counter()  # (step, "file:line op") -> count

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if is_sync(func, args, kwargs) and not any(args[0] is tensor for tensor in self.on_host):
            self.counts[(self.step(), f"{_where()} {func.overloadpacket.__name__}")] += 1
        return func(*args, **kwargs)

    def by_line(self, steps=None) -> dict[str, int]:
        """Syncs per source line and op (of the given steps only, if any), most frequent first."""
        tally = Counter()
        for (step, where), count in self.counts.items():
            if steps is None or step in steps:
                tally[where] += count
        return dict(tally.most_common())

    def by_step(self) -> dict[int, int]:
        tally = Counter()
        for (step, _), count in self.counts.items():
            tally[step] += count
        return dict(sorted(tally.items()))
