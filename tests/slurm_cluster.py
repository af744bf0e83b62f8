"""A real single-node SLURM cluster for the tests: munged, slurmctld and slurmd started from a private folder.

Everything lives under one temporary folder (config, state, spool, logs, munge socket and key), so nothing of the
machine's own SLURM or munge setup is touched; `stop()` ends exactly the daemons it started, by PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch")
REPO_ROOT = Path(__file__).resolve().parents[1]


def missing() -> str | None:
    """Why a cluster cannot start here (None: it can)."""
    absent = [name for name in DAEMONS if shutil.which(name) is None]
    if absent:
        return f"{', '.join(absent)} not installed (Debian: apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "the test cluster runs its daemons as root"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _conf(folder: Path, node: str, cpus: int, memory_mib: int) -> str:
    # cred_expire=10: a requeued job waits this long before it may start again (default 120 s).
    # MinJobAge=6: `sbatch --wait` polls every 2 s (measured: a 13 s job returned after 18 s; with the default
    # 300 s, or 24 s, the polls grow 2 -> 8 -> 32 s and the same job returned after 42 s)
    return f"""ClusterName=stellar-test
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={folder}/munge.socket,cred_expire=10
CredType=cred/munge
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
KillWait=30
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=6
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mib} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""


class SlurmCluster:
    def __init__(self, folder: Path):
        self.folder = folder
        self.processes: list[subprocess.Popen] = []
        self.env = {**os.environ, "SLURM_CONF": str(folder / "slurm.conf")}

    def start(self) -> "SlurmCluster":
        folder = self.folder
        for sub in ("state", "spool", "munge"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        key = folder / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        node = socket.gethostname().split(".")[0]
        memory_mib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2
        (folder / "slurm.conf").write_text(_conf(folder, node, os.cpu_count() or 1, memory_mib))
        self._daemon(["munged", "--foreground", "--force", f"--socket={folder}/munge.socket",
                      f"--key-file={key}", f"--pid-file={folder}/munge/munged.pid",
                      f"--log-file={folder}/munge/munged.log", f"--seed-file={folder}/munge/munged.seed"])
        self._wait(lambda: (folder / "munge.socket").exists(), "munged")
        self._daemon(["slurmctld", "-D", "-i", "-f", str(folder / "slurm.conf")])
        self._wait(lambda: self.run("scontrol", "ping", check=False).stdout.count("UP") >= 1, "slurmctld")
        self._daemon(["slurmd", "-D", "-f", str(folder / "slurm.conf"), "-N", node])
        self._wait(lambda: "idle" in self.run("sinfo", "-h", "-o", "%T", check=False).stdout, "slurmd")
        return self

    def _daemon(self, command: list[str]) -> None:
        log = open(self.folder / f"{command[0]}.out", "w")
        self.processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                               start_new_session=True))

    def _wait(self, ready, name: str, seconds: float = 60) -> None:
        deadline = time.time() + seconds
        while time.time() < deadline:
            if self.processes[-1].poll() is not None:
                break
            if ready():
                return
            time.sleep(0.5)
        self.stop()
        log = (self.folder / f"{name}.out").read_text()[-1500:] if (self.folder / f"{name}.out").exists() else ""
        raise RuntimeError(f"{name} did not start: {log}")

    def run(self, *command: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(command, capture_output=True, text=True, env=self.env, check=check, timeout=timeout,
                              cwd=REPO_ROOT)  # jobs are submitted from the repository root, as the README says

    def stop(self) -> None:
        """Cancel the jobs still known to this controller, then end the daemons this object started (and only
        those), newest first."""
        if self.processes and self.processes[-1].poll() is None:
            self.run("scancel", "--full", "--state=RUNNING", "--state=PENDING", check=False)
            jobs = self.run("squeue", "-h", "-o", "%i", check=False).stdout.split()
            if jobs:
                self.run("scancel", "--signal=KILL", "--full", *jobs, check=False)
                deadline = time.time() + 30
                while time.time() < deadline and self.run("squeue", "-h", check=False).stdout.strip():
                    time.sleep(0.5)
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.processes.clear()
