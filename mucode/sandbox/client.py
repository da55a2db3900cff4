"""Host side of one worker: frames out, verdicts back, over any byte connection.

A Connection is the transport (local pipes in local.py, a Docker attach socket in
docker.py). WorkerClient checks the worker's hello (its source must match this checkout's,
so an outdated image is refused) and turns Programs into jobs and replies into Verdicts.
A worker that closes its channel, breaks the framing or overruns the job's deadline raises
WorkerDied; the pool (pool.py) replaces it. Does not start workers (local.py and docker.py do).
"""

import time
from pathlib import Path
from typing import Protocol

from .errors import SandboxError, StaleWorker, WorkerDied
from .program import STATUSES, Program, Verdict
from .worker.protocol import ProtocolError, encode_frame, read_frame
from .worker.version import worker_source_hash

WORKER_DIR = Path(__file__).resolve().parent / "worker"
STARTUP_TIMEOUT_S = 60.0
REPLY_GRACE_S = 30.0  # beyond the program's own timeout: fork, cleanup, a slow disk


class Connection(Protocol):
    def send(self, data: bytes) -> None:
        """Write all of data; raise WorkerDied if the worker is gone."""

    def recv_exact(self, size: int, deadline: float) -> bytes:
        """Exactly size bytes, fewer only at end of stream; WorkerDied past the monotonic deadline."""

    def diagnostics(self) -> str:
        """The tail of the worker's stderr, for error messages."""

    def close(self) -> None:
        """Stop the worker and release everything; safe to call twice."""


def expected_worker_hash() -> str:
    return worker_source_hash(str(WORKER_DIR))


class WorkerClient:
    def __init__(self, connection: Connection, where: str) -> None:
        self._connection = connection
        self._where = where
        self._seq = 0
        hello = self._receive(time.monotonic() + STARTUP_TIMEOUT_S)
        if hello.get("type") != "hello":
            raise SandboxError(f"{where}: expected a hello from the worker, got {hello.get('type')!r}")
        if hello.get("worker_hash") != expected_worker_hash():
            connection.close()
            raise StaleWorker(
                f"{where} runs an older sandbox worker than this checkout: rebuild the image "
                "(`mucode sandbox build` or `bash containers/setup-docker.sh`)"
            )
        self.features: dict = dict(hello.get("features") or {})
        self.python_version: str = str(hello.get("python", ""))

    def _receive(self, deadline: float) -> dict:
        try:
            message = read_frame(lambda size: self._connection.recv_exact(size, deadline))
        except ProtocolError as exc:
            raise WorkerDied(
                f"{self._where}: broken channel ({exc}); worker stderr: {self._connection.diagnostics()}"
            ) from None
        if message is None:
            raise WorkerDied(f"{self._where}: the worker exited; its stderr: {self._connection.diagnostics()}")
        return message

    def run(self, program: Program, timeout_s: float, memory_mb: int) -> Verdict:
        self._seq += 1
        job = {
            "type": "run",
            "seq": self._seq,
            "code": program.code,
            "tests": program.tests,
            "timeout_s": timeout_s,
            "memory_mb": memory_mb,
        }
        self._connection.send(encode_frame(job))
        reply = self._receive(time.monotonic() + timeout_s + REPLY_GRACE_S)
        if reply.get("seq") != self._seq:
            raise WorkerDied(f"{self._where}: reply for job {reply.get('seq')!r}, expected {self._seq}")
        if reply.get("type") == "rejected":
            raise SandboxError(f"{self._where} rejected a job: {reply.get('reason')}")
        status = reply.get("status")
        if reply.get("type") != "verdict" or status not in STATUSES:
            raise WorkerDied(f"{self._where}: malformed reply {reply!r:.200}")
        return Verdict(
            id=program.id,
            status=status,
            passed=status == "passed",
            feedback=str(reply.get("feedback", "")),
            wall_s=float(reply.get("wall_s", 0.0)),
        )

    def close(self) -> None:
        self._connection.close()
