"""A warm interpreter for the suite's commands: it imports the heavy libraries once (torch, torchvision,
accelerate, scikit-learn, pandas, ...: ~5 s per fresh interpreter here), then forks one child process per command,
which runs the command exactly as `python -m stellar_dist ...` or `python launch/train.py ...` would (its own
process, working directory, environment, argv, stdout / stderr files and exit status). ~150 commands per suite:
about 12 minutes of CPU saved on 2 cores.

Nothing of torch runs here before a fork (only imports: no thread pool is started), so each child starts clean.
Protocol, one JSON line each way: {"argv", "module" | "path", "cwd", "env", "stdout", "stderr", "timeout", "hide"}
->
{"returncode"} (-9 when the child ran past its timeout and was killed).
"""

import json
import os
import runpy
import signal
import sys
import time
import traceback


def _warm() -> None:
    os.environ.setdefault("MPLBACKEND", "Agg")
    import numpy  # noqa: F401
    import pandas  # noqa: F401
    import PIL.Image  # noqa: F401
    import scipy.optimize  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import sklearn.metrics  # noqa: F401
    import torch  # noqa: F401
    import torchvision  # noqa: F401
    import accelerate  # noqa: F401
    import matplotlib.pyplot  # noqa: F401
    import webdataset  # noqa: F401

    import stellar_dist.cli  # noqa: F401
    import stellar_dist.training.engine  # noqa: F401
    import stellar_dist.inference.predict  # noqa: F401


def _child(request: dict) -> int:
    os.setsid()  # its own process group, as a command started from a shell
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        handle = os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(handle, fd)
        os.close(handle)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.argv = list(request["argv"])
    for name in request.get("hide", ()):  # Python's own way to make an import fail: a machine without the wheel
        sys.modules[name] = None
    try:
        if request.get("module"):
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        else:
            sys.path[0] = os.path.dirname(os.path.abspath(request["path"]))
            runpy.run_path(request["path"], run_name="__main__")
        return 0
    except SystemExit as done:
        if done.code is None or isinstance(done.code, int):
            return done.code or 0
        print(done.code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001  (what an interpreter prints for an uncaught exception)
        traceback.print_exc()
        return 1


def _finalize() -> None:
    """What an interpreter does at exit: wait for non-daemon threads, run atexit handlers, flush."""
    import atexit
    import threading

    try:
        threading._shutdown()
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass


def _wait(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            return -9
        time.sleep(0.02)


def main() -> None:
    _warm()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _child(request)
                _finalize()
            finally:
                os._exit(code if isinstance(code, int) else 1)
        print(json.dumps({"returncode": _wait(pid, request["timeout"])}), flush=True)


if __name__ == "__main__":
    main()
