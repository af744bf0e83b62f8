"""Where results go, for every command: outputs checked against inputs, one writer per output, files written
atomically with the user's umask, and an existing file replaced only when stellar-dist wrote it.

    check_paths({"--out": out}, {"--input": catalog, "--model": model})  # no output equals or lies in an input
    locks = take_files({"--out": out}, "predict", overwrite)  # a second writer exits at once; a user's file stays
    with atomic_file(out) as temporary: ...                    # a finished file or none
    claim(out, "predict")                                      # recorded as ours (size, mtime); release the locks

Ownership: each folder that receives outputs keeps a small hidden record, `.stellar-dist-outputs.json`, of the
files stellar-dist wrote there (command, size, modification time). A file is replaced without `--overwrite` only
when the record lists it for the same command, unchanged since; a file the user made, edited or copied in is
refused. Locks are `fcntl.flock` on a hidden `.NAME.lock` beside the output: the kernel releases them when the
holder exits, is killed or its node's job is requeued, so a stale lock never blocks anyone (a lock file is
removed when its holder finishes; one left by a killed process is simply locked again).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import json
import os
import re
import socket
import stat
import time
from pathlib import Path

from .errors import UserError
from .files import atomic_path, follow_umask, read_json, sweep, umask  # noqa: F401  (re-exported)

RECORD = ".stellar-dist-outputs.json"
_HELD: list = []  # lock files held for the life of this process (a run holds its folder until it exits)


@atexit.register
def _release_held() -> None:
    for lock in list(_HELD):
        with contextlib.suppress(Exception):
            lock.release()


def _forget_in_child() -> None:
    """A forked child (a DataLoader worker) shares its parent's locked files; flock belongs to the open file, so a
    child that outlives a killed parent for a moment would keep the run locked, and a child that released it
    would unlock its parent. The child closes its copies (the parent's lock stays) and forgets them."""
    for lock in _HELD:
        with contextlib.suppress(OSError):
            lock.handle.close()
    _HELD.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_paths(outputs: dict[str, str | Path | None], inputs: dict[str, str | Path | None]) -> None:
    """Refuse an output that is, or lies inside, one of the inputs, or two outputs that are one file."""
    real_inputs = {name: _real(path) for name, path in inputs.items() if path}
    seen: dict[Path, str] = {}
    for name, path in outputs.items():
        if not path:
            continue
        real = _real(path)
        for input_name, input_path in real_inputs.items():
            if inside(real, input_path):
                where = "is" if real == input_path else "lies inside"
                raise UserError(f"{name} {path} {where} {input_name} {inputs[input_name]}: writing it would destroy "
                                "an input; choose an output path outside the inputs")
        if real in seen:
            raise UserError(f"{name} and {seen[real]} are both {path}: give each output its own path")
        seen[real] = name


def _stat_key(path: Path) -> dict:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _flock(path: Path, blocking: bool):
    """An open, exclusively locked `path` (created if needed); raises _Held, with the holder's line, when another
    process holds it and `blocking` is false. Lock files are removed on release, so after locking we check that
    `path` is still the file we locked (its holder may have removed it meanwhile) and try again if not. No link is
    followed, and a path that is not a small, single-link file of ours is refused (NotOurLock): a lock file
    planted as a link or a hard link to someone's file is never truncated."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise NotOurLock(f"{path} is a symbolic link") from None
            raise
        handle = os.fdopen(fd, "r+")
        _check_lock_file(handle, path)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            _holder(handle)
        try:
            if os.lstat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                return handle
        except FileNotFoundError:
            pass
        handle.close()


def _check_lock_file(handle, path: Path) -> None:
    status = os.fstat(handle.fileno())
    problem = ("is not a regular file" if not stat.S_ISREG(status.st_mode) else
               "has other hard links" if status.st_nlink != 1 else
               "is too large to be a lock file" if status.st_size > 4096 else None)
    if problem is None and status.st_size:
        problem = None if HOLDER_LINE.fullmatch(handle.read()) else "holds text stellar-dist did not write"
    if problem:
        handle.close()
        raise NotOurLock(f"{path} {problem}")


HOLDER_LINE = re.compile(r"[^\n]* \(host [^\n]*, PID \d+, started [^\n]*\)\n?")  # what OutputLock writes


class NotOurLock(Exception):
    """A lock path that is not a lock file stellar-dist made (a planted link, someone's file)."""


def _holder(handle) -> None:
    handle.seek(0)
    text = handle.read().strip()
    handle.close()
    raise _Held(text or "another process")


class _Held(Exception):
    pass


def _unlock(handle, path: Path) -> None:
    if not handle.closed:
        with contextlib.suppress(OSError):
            path.unlink()  # before unlocking: a waiting writer then re-checks and makes a new one
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


@contextlib.contextmanager
def _record(folder: Path):
    """The folder's ownership record, read and rewritten under a lock (several writers may share a folder)."""
    path, lock_path = folder / RECORD, folder / f"{RECORD}.lock"
    try:
        lock = _flock(lock_path, blocking=True)
    except NotOurLock as error:
        raise UserError(f"{error}, not a lock file of stellar-dist's: remove it if it is yours") from None
    try:
        entries = read_json(path, 16 << 20) if path.is_file() else {}
        entries = entries if isinstance(entries, dict) else {}
    except (OSError, ValueError):
        entries = {}
    try:
        before = dict(entries)
        yield entries
        if entries != before:
            with atomic_file(path) as temporary:
                temporary.write_text(json.dumps(entries, indent=1) + "\n")
    finally:
        _unlock(lock, lock_path)


def owned(path: str | Path, command: str) -> bool:
    """Did `command` write this file, and is it unchanged since?"""
    path = Path(path)
    record = path.parent / RECORD
    if not path.is_file() or not record.is_file():
        return False
    try:
        entry = read_json(record, 16 << 20).get(path.name)
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(entry, dict) and entry.get("command") == command and \
        {key: entry.get(key) for key in ("size", "mtime_ns")} == _stat_key(path)


def claim(path: str | Path, command: str) -> None:
    """Record a file this command has just written (the next run of it may replace it)."""
    path = Path(path)
    with _record(path.parent) as entries:
        entries[path.name] = {"command": command, **_stat_key(path)}


def release(path: str | Path) -> None:
    """Delete a file this command wrote earlier (and only then), and forget it."""
    path = Path(path)
    if not path.exists():
        return
    with _record(path.parent) as entries:
        entry = entries.get(path.name)
        if path.is_file() and isinstance(entry, dict) and \
                {key: entry.get(key) for key in ("size", "mtime_ns")} == _stat_key(path):
            path.unlink()
            entries.pop(path.name, None)


def require_replaceable(path: str | Path, command: str, overwrite: bool = False, option: str = "--out") -> None:
    """An existing output may be replaced only when `command` wrote it (unchanged), or with --overwrite."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise UserError(f"{option} {path} is a folder or a link, not a file: choose a file path")
    if not path.exists() or owned(path, command) or overwrite:
        return
    raise UserError(f"{option} {path} already exists and was not written by `stellar-dist {command}` (or was "
                    "changed since): choose another path, or pass --overwrite to replace it")


atomic_file = atomic_path  # a finished file or none, in a private folder beside it (files.py)


class OutputLock:
    """One writer per output: an exclusive advisory lock on `.NAME.lock` beside `target`, held until `release()`
    or the process ends. A second writer gets one line naming the holder (host, PID, start time)."""

    def __init__(self, target: str | Path, what: str):
        target = _real(target)
        self.path, self.what = target.parent / f".{target.name}.lock", what
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            self.handle = _flock(self.path, blocking=False)
        except OSError as error:
            raise UserError(f"cannot write beside {target} ({error.strerror}): choose a writable folder, or fix "
                            "its permissions") from None
        except _Held as held:
            raise UserError(f"{target} is being written by {held}: wait for it to finish (or stop it), or "
                            "choose another output") from None
        except NotOurLock as error:
            raise UserError(f"{error}, not a lock file of stellar-dist's: nothing was written; remove it if it is "
                            f"yours, or choose another output than {target}") from None
        self.handle.seek(0)
        self.handle.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        self.handle.write(f"{what} (host {socket.gethostname()}, PID {os.getpid()}, started {started})\n")
        self.handle.flush()
        _HELD.append(self)
        sweep(target.parent)  # leftovers of killed commands writing here (held by nobody now)
        if target.is_dir():
            sweep(target)

    def release(self) -> None:
        _unlock(self.handle, self.path)
        if self in _HELD:
            _HELD.remove(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def take_files(files: dict[str, Path | None], command: str, overwrite: bool = False) -> list[OutputLock]:
    """For a command that writes `files` ({option: path}): each existing one replaceable (checked before the locks,
    so a refusal leaves nothing, and again under them, since another writer may have finished meanwhile) and
    locked; returns the locks."""
    files = {name: Path(path) for name, path in files.items() if path}
    for name, path in files.items():
        require_replaceable(path, command, overwrite, name)
    locks = []
    try:
        locks += [OutputLock(path, f"stellar-dist {command}") for path in files.values()]
        for name, path in files.items():
            require_replaceable(path, command, overwrite, name)
    except UserError:
        for lock in locks:
            lock.release()
        raise
    return locks


def take_folder(folder: str | Path, names: tuple[str, ...], command: str, inputs: dict) -> OutputLock:
    """For a command that writes `names` into `folder`: the folder is no input, is locked, and holds none of the
    names unless `command` wrote them; returns the lock (release it, or let the process end)."""
    folder = Path(folder)
    check_paths({"--out": folder}, inputs)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {folder} is a file: choose a folder")
    for name in names:  # before the lock: a refused command leaves nothing behind
        require_replaceable(folder / name, command, option=f"--out {folder}:")
    lock = OutputLock(folder, f"stellar-dist {command}")
    try:
        for name in names:  # and again under it: another writer may have finished meanwhile
            require_replaceable(folder / name, command, option=f"--out {folder}:")
    except UserError:
        lock.release()
        raise
    return lock


def claim_all(folder: str | Path, names: tuple[str, ...], command: str) -> None:
    for name in names:
        if (Path(folder) / name).is_file():
            claim(Path(folder) / name, command)
