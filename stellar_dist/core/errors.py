"""User-facing errors: one clear line naming the problem and the fix, never a traceback."""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import signal
import sys
import threading
import time


class UserError(ValueError):
    """A problem with the user's input or environment; its message says what to do. A ValueError, so a notebook's
    `except ValueError` catches a refused argument as it would from pandas or astropy; the commands print its one
    line (exit_on_user_error). Code of ours that turns a ValueError of a library into a skipped sample or a message
    of its own lets a UserError through first (`except UserError: raise`)."""


class PathNotFound(UserError, FileNotFoundError):
    """A path the user gave does not exist: also a FileNotFoundError, as `open` would raise (the message names the
    path and what to pass instead)."""


# Errors of the machine rather than of the code: a full or read-only disk, a folder the user cannot write.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}


def user_message(error: BaseException) -> str:
    """The one line to show. A UserError raised in a DataLoader worker arrives re-wrapped with the worker's
    traceback in its text: keep only the original message."""
    text = str(error)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split("UserError: ", 1)[-1]
    return " ".join(text.split())


def storage_message(error: OSError) -> str:
    where = f" ({error.filename})" if error.filename else ""
    return (f"{error.strerror or error}{where}: free disk space or fix the folder's permissions (or choose another "
            "folder), then run the same command again; complete checkpoints and shards are never left half-written")


@contextlib.contextmanager
def sigterm_as_exit():
    """Within this block SIGTERM raises SystemExit, so `finally` / `except BaseException` clean-ups run (staging
    folders removed, worker pools terminated) instead of the process dying where it stands."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_now(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_now)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def storage_failure(error: BaseException, folder) -> UserError | None:
    """A write that failed for lack of space or permission, seen through libraries that hide the errno
    (safetensors says "os error 28", torch.save only "file write failed"): as a one-line UserError, else None."""
    import shutil

    text = str(error)
    codes = [code for code in STORAGE_ERRNOS if f"os error {code})" in text or os.strerror(code) in text]
    try:
        if not codes and shutil.disk_usage(folder).free < 16 * 2**20:
            codes = [errno.ENOSPC]
    except OSError:
        pass
    if not codes:
        return None
    return UserError(storage_message(OSError(codes[0], os.strerror(codes[0]), str(folder))))


# What gloo / NCCL say when the other end of a collective died (socket closed) or never answered (timeout).
PEER_FAILURES = ("timed out", "timeout", "connection closed by peer", "connection reset by peer", "broken pipe",
                 "nccl communicator was aborted", "socket closed")


def peer_failure(error: BaseException) -> str | None:
    """'died' or 'stopped answering' when `error` is a collective that lost another rank, else None."""
    import torch.distributed as dist

    if not isinstance(error, (RuntimeError, dist.DistError)):
        return None
    text = str(error).lower()
    if not any(marker in text for marker in PEER_FAILURES):
        return None
    return "stopped answering" if "time" in text else "died"


def exit_on_user_error(func):
    """Run `func`; turn a UserError (or a full / read-only disk) into one line on stderr and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except UserError as error:
            message = user_message(error)
        except KeyboardInterrupt:
            print("\nerror: interrupted (Ctrl-C); finished outputs are complete, unfinished ones were removed",
                  file=sys.stderr, flush=True)
            raise SystemExit(130) from None
        except OSError as error:
            if error.errno not in STORAGE_ERRNOS:
                raise
            message = storage_message(error)
        from . import (
            dist,  # here, not at the top: `stellar-dist --help` never imports torch
        )

        prefix = "" if dist.is_main() else f"rank {os.environ.get('RANK', '?')}: "
        print(f"{prefix}error: {message}", file=sys.stderr, flush=True)
        _tell_launcher(f"error: {message}")
        raise SystemExit(2)

    return wrapper


def _tell_launcher(line: str) -> None:
    """Under torchrun / a multi-process `accelerate launch`, the launcher ends with its own failure summary: an
    error file makes that summary name this one line as the root cause instead of a link to the docs."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        try:
            with open(path, "w") as handle:
                json.dump({"message": line, "timestamp": int(time.time())}, handle)
        except OSError:
            pass


def raise_if_any(message: str | None) -> None:
    """Every rank raises the same one-line UserError when rank 0 (the only writer) refused: locks and ownership
    are checked on rank 0, and the other ranks must not wait for it in a collective."""
    from . import dist

    message = dist.broadcast_object(message)
    if message:
        raise UserError(message)
