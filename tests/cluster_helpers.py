"""Helpers for tests/test_cluster.py: Ray nodes that a test starts and stops itself, and ssh checks.

A node here is `ray start --block` run in a new session. Every process of the node (GCS, raylet, agents,
and the worker processes running trials, which the raylet puts in process groups of their own) stays in
that session, so a test stops exactly its own nodes by killing the processes of their sessions, by pid,
and never runs `ray stop`, which stops every Ray on the machine (the `ray.init` clusters of other tests
included). Each node also gets its own --temp-dir, so nothing is written to the shared /tmp/ray, whose
ray_current_cluster file is what a bare `ray.init()` joins.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

SSH_KEY = Path("/root/.ssh/ebomlc_cluster")   # made by .ci/cluster-setup.sh; auth.ssh_private_key in cluster-local.yaml
RAY = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"   # the CLI of the Ray the tests import


def free_port() -> int:
    """A TCP port that nothing listens on now (on any interface: Ray's GCS binds them all)."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def port_in_use(port: int) -> bool:
    """Whether a socket listens on `port` (connections of a stopped server lingering in TIME_WAIT do
    not count: servers bind over them)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
        except OSError:
            return True
    return False


def ssh_to_localhost_works() -> bool:
    """Whether `ssh -i SSH_KEY root@127.0.0.1` logs in without a password (what `ray up` needs)."""
    if not SSH_KEY.is_file() or shutil.which("ssh") is None:
        return False
    command = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR", "-i", str(SSH_KEY), "root@127.0.0.1", "true"]
    return subprocess.run(command, capture_output=True, timeout=30).returncode == 0


def session(sid: int) -> list[int]:
    """Pids of the live processes in session `sid` (read from /proc; zombies count as gone)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]   # after "pid (name)"
            if os.getsid(int(entry)) == sid and state != "Z":
                pids.append(int(entry))
        except OSError:   # the process ended while we looked
            continue
    return pids


def command_line(pid: int) -> list[str]:
    """The process's argv as it shows it now (Ray renames its workers, e.g. "ray::ImplicitFunc.train")."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


class RayNode:
    """One Ray node: `ray start --block ARGS` in a new session, with its own temp dir and log file."""

    def __init__(self, args: list[str], *, env: dict[str, str], temp_dir: Path, log: Path, timeout: float = 180):
        with open(log, "w") as out:
            self.process = subprocess.Popen([RAY, "start", "--block", f"--temp-dir={temp_dir}", *args], env=env,
                                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.sid = self.process.pid   # start_new_session: the process leads its own session
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"ray start {' '.join(args)} did not start; its output:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        # Ray's id of the node, as trial rows record it
        self.node_id = next((arg.split("=", 1)[1] for pid in self.pids() for arg in command_line(pid)
                             if arg.startswith("--node_id=")), None)
        if self.node_id is None:
            self.kill()
            raise RuntimeError(f"ray start {' '.join(args)} started no raylet; its output:\n{log.read_text()[-3000:]}")

    def pids(self) -> list[int]:
        return session(self.sid)

    def kill(self) -> None:
        """SIGKILL every process of the node, as a crashed or pre-empted machine would go."""
        self._signal_all(signal.SIGKILL, wait=30)

    def stop(self) -> None:
        """SIGTERM every process of the node, then SIGKILL what is left after 5 s (the head's GCS can
        wait for a drain that never comes)."""
        if not self._signal_all(signal.SIGTERM, wait=5):
            self.kill()

    def _signal_all(self, signum: int, wait: float) -> bool:
        """Send `signum` to the node's processes (again to any started meanwhile) until none is left or
        `wait` seconds have passed; whether none is left."""
        deadline = time.monotonic() + wait
        while pids := self.pids():
            if time.monotonic() > deadline:
                return False
            for pid in pids:
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        self.process.wait(timeout=10)
        return True
