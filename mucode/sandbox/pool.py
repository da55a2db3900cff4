"""Sandbox: a pool of warm workers that runs batches of programs.

One host thread per worker feeds it programs from a shared queue, so a batch streams
through all workers and verdicts come back in input order. A worker that dies or stalls is
replaced and its program retried once on the fresh worker (a program that kills workers
twice gets an `error` verdict). One batch at a time per Sandbox; close() (or leaving the
`with` block, or garbage collection) stops every worker. Does not know how workers are
started (a backend passes a start function).
"""

import logging
import queue
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from .client import WorkerClient
from .errors import SandboxError, WorkerDied
from .program import Program, Verdict

log = logging.getLogger(__name__)
StartWorker = Callable[[], WorkerClient]


def _close_all(clients: list[WorkerClient | None]) -> None:
    for index, client in enumerate(clients):
        if client is not None:
            client.close()
            clients[index] = None


class Sandbox:
    def __init__(self, backend: str, start_worker: StartWorker, workers: int, timeout_s: float, memory_mb: int) -> None:
        self._backend = backend
        self._start_worker = start_worker
        self._timeout_s = timeout_s
        self._memory_mb = memory_mb
        self._batch_lock = threading.Lock()
        self._restarts = 0
        self._restarts_lock = threading.Lock()
        self._clients: list[WorkerClient | None] = [None] * workers
        self._finalizer = weakref.finalize(self, _close_all, self._clients)
        with ThreadPoolExecutor(max_workers=workers) as starter:
            futures = [starter.submit(start_worker) for _ in range(workers)]
        errors = []
        for index, future in enumerate(futures):
            try:
                self._clients[index] = future.result()
            except BaseException as exc:
                errors.append(exc)
        if errors:
            self.close()
            raise errors[0]
        self._warn_about_missing_isolation()

    @property
    def backend(self) -> str:
        return self._backend

    @property
    def workers(self) -> int:
        return len(self._clients)

    @property
    def worker_restarts(self) -> int:
        """How many workers died and were replaced since this sandbox started."""
        return self._restarts

    def isolation_features(self) -> dict:
        """Which isolation features the first worker reported (all True in a full setup)."""
        client = self._clients[0]
        return dict(client.features) if client else {}

    def _warn_about_missing_isolation(self) -> None:
        missing = sorted(name for name, present in self.isolation_features().items() if not present)
        if missing:
            log.warning("sandbox (%s) runs without: %s; programs are less isolated", self._backend, ", ".join(missing))

    def _run_on(self, slot: int, program: Program) -> Verdict:
        last_failure: WorkerDied | None = None
        for _attempt in range(2):
            client = self._clients[slot]
            if client is None:
                client = self._clients[slot] = self._start_worker()
            try:
                return client.run(program, self._timeout_s, self._memory_mb)
            except WorkerDied as exc:
                log.warning("replacing a sandbox worker: %s", exc)
                client.close()
                self._clients[slot] = None
                with self._restarts_lock:
                    self._restarts += 1
                last_failure = exc
        feedback = f"The sandbox worker died twice while running this program ({last_failure})."
        return Verdict(id=program.id, status="error", passed=False, feedback=feedback, wall_s=0.0)

    def run(self, programs: Sequence[Program], progress: Callable[[int], None] | None = None) -> list[Verdict]:
        """Run every program; verdicts in input order. progress(n) is called with n finished programs (n=1)."""
        for position, program in enumerate(programs):
            if not isinstance(program, Program):
                raise TypeError(f"programs[{position}] is a {type(program).__name__}, not a mucode.sandbox.Program")
        if not self._finalizer.alive:
            raise SandboxError("this sandbox is closed: make a new one with make_sandbox()")
        with self._batch_lock:
            return self._run_batch(list(programs), progress)

    def _run_batch(self, programs: list[Program], progress: Callable[[int], None] | None) -> list[Verdict]:
        pending: queue.SimpleQueue = queue.SimpleQueue()
        for index, program in enumerate(programs):
            pending.put((index, program))
        finished: queue.SimpleQueue = queue.SimpleQueue()
        results: list[Verdict | None] = [None] * len(programs)
        stop = threading.Event()

        def feed(slot: int) -> None:
            while not stop.is_set():
                try:
                    index, program = pending.get_nowait()
                except queue.Empty:
                    return
                try:
                    results[index] = self._run_on(slot, program)
                except BaseException as exc:
                    finished.put(exc)
                    return
                finished.put(None)

        threads = [threading.Thread(target=feed, args=(slot,), daemon=True) for slot in range(len(self._clients))]
        for thread in threads:
            thread.start()
        try:
            for _ in range(len(programs)):
                failure = finished.get()
                if failure is not None:
                    raise failure
                if progress is not None:
                    progress(1)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        verdicts = [verdict for verdict in results if verdict is not None]
        if len(verdicts) != len(programs):
            raise SandboxError(f"{len(programs) - len(verdicts)} programs got no verdict; this is a sandbox bug")
        return verdicts

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *_exc_info) -> None:
        self.close()
