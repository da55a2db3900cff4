"""The local backend's workers: one process per worker on this machine.

Each worker is the stdlib-only worker package run by a system interpreter with -I -S (no
site-packages, no environment: the same standard library a program sees in Docker),
started in its own session with a scrubbed environment. It isolates itself (network, mount,
IPC and PID namespaces, unprivileged program uid: see worker/isolation.py); stopping it is
SIGKILL to the process the host started, which takes the worker's whole PID namespace with
it. Does not pool workers (pool.py does).
"""

import os
import select
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .client import WorkerClient
from .errors import SandboxError, WorkerDied

PYTHON_ENV = "MUCODE_SANDBOX_PYTHON"
SCRATCH_MB = 256
BOOTSTRAP = "import sys; sys.path.insert(0, sys.argv[1]); from worker.main import main; sys.exit(main(sys.argv[2:]))"
WORKER_PARENT = Path(__file__).resolve().parent  # holds the `worker` package
_STDERR_TAIL = 4000


def worker_command(python: str, worker_parent: str, mode: str, scratch_mb: int = SCRATCH_MB) -> list[str]:
    return [python, "-I", "-S", "-c", BOOTSTRAP, worker_parent, "--mode", mode, "--scratch-mb", str(scratch_mb)]


def world_traversable(path: str) -> bool:
    """Whether every directory above path lets an unrelated uid through (o+x)."""
    directory = os.path.dirname(os.path.realpath(path))
    while True:
        if not os.stat(directory).st_mode & stat.S_IXOTH:
            return False
        if directory == "/":
            return True
        directory = os.path.dirname(directory)


def choose_interpreter() -> str:
    """$MUCODE_SANDBOX_PYTHON, else this interpreter's base if programs can reach it, else python3."""
    chosen = os.environ.get(PYTHON_ENV)
    if chosen:
        return chosen
    base = getattr(sys, "_base_executable", "") or sys.executable
    if os.geteuid() != 0 or world_traversable(base):
        return base  # programs only drop to another uid when the worker runs as root
    for candidate in ("/usr/bin/python3", shutil.which("python3"), "/usr/local/bin/python3"):
        if candidate and os.path.exists(candidate) and world_traversable(candidate):
            return candidate
    raise SandboxError(
        f"no python3 that unprivileged programs can read: set {PYTHON_ENV} to a system interpreter (3.10+)"
    )


class PipeConnection:
    """A local worker process and its stdin/stdout pipes."""

    def __init__(self, command: list[str]) -> None:
        self._stderr = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"},  # no host secrets
            start_new_session=True,
            close_fds=True,
        )
        self._stdout_fd = self._process.stdout.fileno()

    def send(self, data: bytes) -> None:
        try:
            self._process.stdin.write(data)
            self._process.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise WorkerDied(f"local worker {self._process.pid} is gone; its stderr: {self.diagnostics()}") from None

    def recv_exact(self, size: int, deadline: float) -> bytes:
        chunks: list[bytes] = []
        remaining = size
        while remaining:
            wait_s = deadline - time.monotonic()
            if wait_s <= 0 or not select.select([self._stdout_fd], [], [], wait_s)[0]:
                raise WorkerDied(f"local worker {self._process.pid} did not answer in time")
            chunk = os.read(self._stdout_fd, remaining)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def diagnostics(self) -> str:
        try:
            self._stderr.seek(0)
            return self._stderr.read().decode("utf-8", errors="replace")[-_STDERR_TAIL:].strip() or "(empty)"
        except ValueError:
            return "(closed)"

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.kill()  # PDEATHSIG then ends the worker and its PID namespace
        self._process.wait()
        for stream in (self._process.stdin, self._process.stdout, self._stderr):
            try:
                stream.close()
            except OSError:
                pass  # the pipe's far end is already gone


def start_local_worker(python: str | None = None) -> WorkerClient:
    command = worker_command(python or choose_interpreter(), str(WORKER_PARENT), "local")
    connection = PipeConnection(command)
    try:
        return WorkerClient(connection, "local sandbox worker")
    except BaseException:
        connection.close()
        raise
