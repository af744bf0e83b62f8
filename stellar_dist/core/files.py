"""Files on a shared, full or hostile filesystem: how every command creates, replaces and reads them.

    with atomic_path(out) as temporary: write(temporary)   # a finished file or none; no planted link is followed
    folder = private_folder(beside, "shards")              # staging: 0700 until finished, removed if we die
    finish_private(folder); folder.rename(final)            # made public (umask), then moved into place
    sweep(folder)                                          # leftovers of killed commands removed, said in one line
    with open_regular(path) as handle: ...                 # no FIFO, device or socket; size bounded
    read_json(path, "the manifest")                        # bounded bytes and depth, one-line errors

Creating: nothing we write is opened by a predictable name in a folder others may write to. Each temporary file
lives in a private folder (`mkdtemp`: an unguessable name, mode 0700, so nobody else can plant a link in it) that
is renamed into place (a rename replaces a link itself, never its target). Such folders are named `.sdtmp-*` and
hold a `.alive` file locked (flock) by their maker for as long as it lives: a folder whose lock is free belongs to
a dead process (SIGKILL, the OOM killer, SLURM's kill after the grace period) and the next command writing there
removes it. Only folders of the current user are ever removed (`shutil.rmtree` follows no link).

Reading: a path is opened without blocking and checked to be a regular file before anything is read (a FIFO
would block forever, a device would never end); sizes are bounded before allocating.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

MARK = ".sdtmp-"  # every temporary file or folder of ours lies in a folder named so
ALIVE = ".alive"  # inside it: locked by the maker while it lives
ORPHAN_AGE_S = 600  # a marked folder without its lock file (killed while being made or finished) after this
MAX_JSON_BYTES = 256 << 20  # manifests of 10^6 samples are ~50 MB; our other records are a few kB
MAX_JSON_DEPTH = 64

_ALIVE_FDS: dict[str, int] = {}  # private folder -> descriptor holding its liveness lock


def _forget_in_child() -> None:
    """A forked child (a DataLoader or pack worker) shares the locked descriptors; closing its copies keeps the
    parent's locks (flock belongs to the open file) and lets the child never release them."""
    for fd in _ALIVE_FDS.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _ALIVE_FDS.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def follow_umask(path: str | Path) -> None:
    """Give a file or folder made with private modes (mkstemp 0600, mkdtemp 0700, safetensors' 0600) the
    permissions the user's umask asks for, as `open()` and `mkdir()` would: a cluster group can read results."""
    path = Path(path)
    with contextlib.suppress(OSError):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask())


def private_folder(beside: str | Path, name: str) -> Path:
    """A new folder `.sdtmp-NAME-XXXXXXXX` in `beside` (created if needed), mode 0700, held by this process."""
    beside = Path(beside)
    beside.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{MARK}{name[:80]}-", dir=beside))
    fd = os.open(folder / ALIVE, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    _ALIVE_FDS[str(folder)] = fd
    return folder


def _release(folder: Path) -> None:
    fd = _ALIVE_FDS.pop(str(folder), None)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def finish_private(folder: Path) -> None:
    """A finished private folder: its lock file removed and the umask's permissions given to it and what it
    holds (a cluster group can read results), ready to be renamed into place by the caller."""
    with contextlib.suppress(FileNotFoundError):
        (folder / ALIVE).unlink()
    _release(folder)
    mask = umask()
    for root, folders, files in os.walk(folder):
        for child in folders:
            os.chmod(os.path.join(root, child), 0o777 & ~mask, follow_symlinks=False)
        for child in files:
            with contextlib.suppress(NotImplementedError, OSError):
                os.chmod(os.path.join(root, child), 0o666 & ~mask, follow_symlinks=False)
    os.chmod(folder, 0o777 & ~mask)


def discard_private(folder: Path) -> None:
    """Remove a private folder and everything in it (an unfinished or refused output)."""
    _release(folder)
    shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path for `path`, in a private folder beside it; when the block ends without an error the
    file gets the umask's permissions and is renamed to `path` (a finished file or none), else it is deleted."""
    path = Path(path)
    folder = private_folder(path.parent, path.name)
    temporary = folder / path.name
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~umask())
        os.replace(temporary, path)
    finally:
        discard_private(folder)


def write_atomically(path: str | Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def _dead(folder: Path, status: os.stat_result) -> bool:
    try:
        fd = os.open(folder / ALIVE, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return time.time() - status.st_mtime > ORPHAN_AGE_S
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True  # nobody holds it: its maker is gone
    except OSError:
        return False
    finally:
        os.close(fd)


def _size(folder: Path) -> int:
    return sum(entry.stat(follow_symlinks=False).st_size for entry in folder.rglob("*"))


def sweep(folder: str | Path, quiet: bool = False) -> list[str]:
    """Remove the private folders of killed commands (ours, this user's, their lock free) in `folder`; one line
    says what was removed. Returns their names."""
    folder, removed, freed = Path(folder), [], 0
    try:
        entries = [entry for entry in os.scandir(folder) if entry.name.startswith(MARK)]
    except OSError:
        return []
    for entry in entries:
        with contextlib.suppress(OSError):
            status = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(status.st_mode) and status.st_uid == os.getuid() and _dead(Path(entry.path), status):
                freed += _size(Path(entry.path))
                shutil.rmtree(entry.path)
                removed.append(entry.name)
    if removed and not quiet:
        print(f"note: removed {len(removed)} leftover(s) of killed stellar-dist commands in {folder} "
              f"({freed / 1e6:.1f} MB: {', '.join(sorted(removed)[:3])}{' ...' if len(removed) > 3 else ''})")
    return removed


def open_append(path: str | Path):
    """A log file opened for appending without following a link; refused unless it is a regular file."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode) or status.st_nlink != 1:
        os.close(fd)
        raise OSError(f"{path} is not a plain file of ours (a hard link or a special file)")
    return os.fdopen(fd, "a")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | Path, max_bytes: int | None = None):
    """`path` opened for reading in binary, checked before anything is read: a regular file (no FIFO, device,
    socket or folder), at most `max_bytes`. Raises ValueError saying why."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO opens at once instead of waiting
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise ValueError(f"{path} is {_kind(status.st_mode)}, not a regular file")
        if max_bytes is not None and status.st_size > max_bytes:
            raise ValueError(f"{path} is {status.st_size} bytes, over the {max_bytes}-byte limit")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def check_regular(path: str | Path) -> None:
    """Raise ValueError unless `path` is a regular file (for readers that take only a path)."""
    with open_regular(path):
        pass


def _depth(value, limit: int) -> None:
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if level > limit:
            raise ValueError(f"nests deeper than {limit} levels")
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))


def read_json(path: str | Path, max_bytes: int = MAX_JSON_BYTES):
    """A JSON file of ours, bounded in bytes and depth. Raises ValueError (or OSError) naming the file."""
    try:
        with open_regular(path, max_bytes) as handle:
            value = json.loads(handle.read())
        _depth(value, MAX_JSON_DEPTH)
    except RecursionError:
        raise ValueError(f"{path} nests too deeply to be ours") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: {' '.join(str(error).split())[:160]}") from None
    return value


def sha256_of(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read in blocks (memory flat in the file's size)."""
    import hashlib

    digest = hashlib.sha256()
    with open_regular(path) as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
