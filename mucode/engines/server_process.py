"""Start a model server as a child process, wait until it answers, and kill it with its children.

``ServerProcess`` runs a command (``python -m sglang.launch_server ...`` on GPU machines, any
OpenAI-compatible server in tests) in its own session, so killing the process group takes
the server's own workers with it and frees the GPU. Its stdout and stderr go to a log file
that every error names. ``wait_until_ready`` polls ``/health`` (SGLang's and other
OpenAI-compatible servers' readiness check) until it answers 200, the process dies, or time
runs out.

Knows nothing about SGLang's flags or about generation.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from mucode.engines.errors import ServerError
from mucode.engines.http_json import RetryableError, send_once

POLL_INTERVAL_S = 0.5


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class ServerProcess:
    """A server command running in its own process group, logging to a file."""

    def __init__(self, command: Sequence[str], name: str, env: Mapping[str, str] | None = None,
                 log_path: str | Path | None = None) -> None:
        self.name = name
        if log_path is None:
            handle, log_path = tempfile.mkstemp(prefix=f"mucode-{name.replace(' ', '-')}-", suffix=".log")
            os.close(handle)
        self.log_path = Path(log_path)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                list(command), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **dict(env or {})}, start_new_session=True,
            )
        # A caller that exits without close() must not leave a server holding the GPU.
        # (A SIGKILLed caller still does: its own session keeps the server alive.)
        atexit.register(self.kill)

    @property
    def pid(self) -> int:
        return self.process.pid

    def check_alive(self) -> None:
        """Raise one line naming the log when the server has exited."""
        code = self.process.poll()
        if code is not None:
            raise ServerError(f"{self.name} exited with code {code}: see {self.log_path}")

    def kill(self) -> None:
        """SIGKILL the whole process group (the server's own children included); safe twice."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # the group is gone already
        self.process.wait(timeout=30)
        atexit.unregister(self.kill)


def wait_until_ready(base_url: str, timeout_s: float, server: ServerProcess | None = None,
                     name: str = "model server") -> None:
    """Poll ``base_url``'s ``/health`` until it answers 200.

    Fails in one line when ``server`` (if given) exits first or ``timeout_s`` passes.
    """
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while True:
        if server is not None:
            server.check_alive()
        try:
            send_once(f"{base_url}/health", None, timeout_s=max(1.0, min(10.0, timeout_s)))
            return
        except RetryableError as error:
            last = str(error)
        if time.monotonic() > deadline:
            where = f": see {server.log_path}" if server is not None else ""
            raise ServerError(f"{name} at {base_url} not ready within {timeout_s:g} s ({last}){where}")
        time.sleep(POLL_INTERVAL_S)
