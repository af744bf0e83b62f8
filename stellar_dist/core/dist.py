"""The few collectives the project needs; each is the identity when there is one process."""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist

_LOCAL_ONLY = [False]


@contextlib.contextmanager
def local_only():
    """Within this block every collective is the identity: for work that one rank does alone (rank 0's k-means)."""
    _LOCAL_ONLY[0] = True
    try:
        yield
    finally:
        _LOCAL_ONLY[0] = False


def world_size() -> int:
    if _LOCAL_ONLY[0]:
        return 1
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    if _LOCAL_ONLY[0]:
        return 0
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """The one answer to "am I the main process" (global rank 0): it alone writes shared files, logs and prints.
    Before the process group starts (or after it ends), the launcher's RANK says."""
    if _LOCAL_ONLY[0] or (dist.is_available() and dist.is_initialized()):
        return rank() == 0
    return os.environ.get("RANK", "0") == "0"


def close() -> None:
    """End this process's group when a command is done. Left to the interpreter's exit, gloo's threads may be torn
    down while joinable and a rank dies with "terminate called without an active exception" (seen once in a suite:
    a 2-rank select that had finished its work)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def on_process_device(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor, if NCCL can move it: under NCCL every tensor of a collective must lie on this process's GPU (gloo
    takes any). One made without device= lies on the CPU: said here in one line, not by NCCL's abort."""
    if dist.is_initialized() and dist.get_backend() == "nccl" and \
            tensor.device != torch.device("cuda", torch.cuda.current_device()):
        raise RuntimeError(f"a {tuple(tensor.shape)} {tensor.dtype} tensor on {tensor.device} entered an NCCL "
                           f"collective on cuda:{torch.cuda.current_device()}: make it with device= (a bug)")
    return tensor


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (returns a new tensor; the input is untouched)."""
    tensor = on_process_device(tensor).clone()
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    tensor = on_process_device(tensor).clone()
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


# gloo moves neither int16 nor bool ("Invalid scalar type"): such tensors travel as int32 and are cast back.
WIDENED = {torch.int16: torch.int32, torch.bool: torch.int32}


def _pad_to_longest(tensor: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Every rank's row count, and this rank's tensor zero-padded to the longest (collectives need equal shapes)."""
    tensor = on_process_device(tensor).to(WIDENED.get(tensor.dtype, tensor.dtype))
    length = torch.tensor([tensor.shape[0]], device=tensor.device)
    lengths = [torch.zeros_like(length) for _ in range(world_size())]
    dist.all_gather(lengths, length)
    sizes = [int(item.item()) for item in lengths]
    padded = torch.zeros((max(sizes), *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor
    return padded, sizes


def gather_variable(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's tensor along dim 0 (lengths may differ), in rank order, on every rank."""
    if world_size() == 1:
        return tensor
    padded, sizes = _pad_to_longest(tensor)
    parts = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)]).to(tensor.dtype)


def gather_equal(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's tensor along dim 0, in rank order, on every rank, when every rank's has the same
    shape (a training step's batch): one all_gather, no exchange of sizes (which would read them on the host)."""
    if world_size() == 1:
        return tensor
    tensor = on_process_device(tensor.contiguous())
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor)
    return torch.cat(parts)


def gather_to_main(tensor: torch.Tensor) -> torch.Tensor | None:
    """Concatenate every rank's tensor (lengths may differ) on rank 0 only; None on the other ranks."""
    if world_size() == 1:
        return tensor
    padded, sizes = _pad_to_longest(tensor)
    parts = [torch.zeros_like(padded) for _ in sizes] if rank() == 0 else None
    dist.gather(padded, parts, dst=0)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)]).to(tensor.dtype) if rank() == 0 else None


def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Rank `src`'s tensor on every rank (shape and dtype must already match)."""
    if world_size() > 1:
        tensor = on_process_device(tensor).contiguous()
        dist.broadcast(tensor, src=src)
    return tensor


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast_object(value, src: int = 0):
    """Rank `src`'s small Python object (our own values: a message, a flag) on every rank."""
    if world_size() == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def gather_objects(values: list) -> list:
    """Every rank's list of small Python objects (our own values), concatenated in rank order, on every rank."""
    if world_size() == 1:
        return list(values)
    everyone = [None] * world_size()
    dist.all_gather_object(everyone, values)
    return [item for part in everyone for item in part]
