"""Run one job in a forked, confined child and watch it from outside.

The worker forks; the child locks itself down (confine.py), runs code then tests
(harness.py) and reports on the verdict pipe. The worker, which never runs program code,
enforces the wall-clock deadline itself (select on a pidfd, so a loop inside C code times
out too; RLIMIT_CPU backs it up), drains stdout/stderr into a bounded capture, then kills
the child's whole tree and reaps it, and decides the verdict (verdict.py). Does not clean
files or IPC objects (main.py calls cleanup.py after each job).
"""

import os
import secrets
import select
import time
import traceback
from dataclasses import dataclass

from . import cleanup
from .capture import BoundedCapture
from .confine import ChildSetup, confine_child
from .harness import flush_standard_streams, report, run_program
from .limits import Limits
from .verdict import CONFINE_FAILED_EXIT, REPORT_FAILED_EXIT, Observation, decide

_READ_CHUNK = 1 << 16
_CHUNKS_PER_DRAIN = 16  # under an output flood, go back to checking the deadline


@dataclass(frozen=True)
class Outcome:
    status: str
    feedback: str
    wall_s: float


def _child_main(
    setup: ChildSetup, limits: Limits, code: str, tests: str, nonce: str, verdict_w: int, output_w: int
) -> None:
    """The forked child. Never returns: it always ends in os._exit.

    SAFETY: this process runs untrusted code once confine_child has returned; it must never
    get back into the worker's loop, hence the os._exit in every path.
    """
    exit_code = CONFINE_FAILED_EXIT
    try:
        try:
            verdict_fd = confine_child(setup, limits, verdict_w, output_w)
        except BaseException:
            traceback.print_exc()
            raise
        status, feedback = run_program(code, tests, setup.work_root, limits)
        exit_code = REPORT_FAILED_EXIT
        flush_standard_streams()
        report(verdict_fd, nonce, status, feedback)
        exit_code = 0
    except BaseException:
        pass  # no verdict was written, so the worker reports an error
    finally:
        os._exit(exit_code)


class _Pipes:
    """The worker's read ends of the output and verdict pipes, drained without blocking."""

    def __init__(self, output_r: int, verdict_r: int, limits: Limits) -> None:
        self.output = BoundedCapture(limits.max_output_bytes)
        self.verdict = bytearray()
        self.verdict_overflow = False
        self._max_verdict = limits.max_verdict_bytes
        self._output_r, self._verdict_r = output_r, verdict_r
        self.open_fds = {output_r, verdict_r}
        for fd in self.open_fds:
            os.set_blocking(fd, False)

    def drain(self, fd: int, max_chunks: int = _CHUNKS_PER_DRAIN) -> None:
        for _ in range(max_chunks):
            if fd not in self.open_fds:
                return
            try:
                chunk = os.read(fd, _READ_CHUNK)
            except BlockingIOError:
                return
            if not chunk:
                self.open_fds.discard(fd)
            elif fd == self._output_r:
                self.output.add(chunk)
            elif len(self.verdict) + len(chunk) > self._max_verdict:
                self.verdict_overflow = True
            else:
                self.verdict += chunk

    def drain_all(self) -> None:
        for fd in list(self.open_fds):
            self.drain(fd, max_chunks=1 << 30)

    def close(self) -> None:
        for fd in (self._output_r, self._verdict_r):
            os.close(fd)


def _watch_until_exit_or_deadline(pid: int, pipes: _Pipes, deadline: float) -> bool:
    """Drain the pipes until the child exits (False) or the deadline passes (True)."""
    pidfd = os.pidfd_open(pid)
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            readable, _, _ = select.select([pidfd, *pipes.open_fds], [], [], remaining)
            for fd in readable:
                if fd != pidfd:
                    pipes.drain(fd)
            if pidfd in readable:
                return False
    finally:
        os.close(pidfd)


def run_job(setup: ChildSetup, limits: Limits, code: str, tests: str) -> Outcome:
    nonce = secrets.token_hex(16)
    verdict_r, verdict_w = os.pipe()
    output_r, output_w = os.pipe()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(verdict_r)
        os.close(output_r)
        _child_main(setup, limits, code, tests, nonce, verdict_w, output_w)
    os.close(verdict_w)
    os.close(output_w)
    pipes = _Pipes(output_r, verdict_r, limits)
    try:
        timed_out = _watch_until_exit_or_deadline(pid, pipes, started + limits.timeout_s)
        wall_s = time.monotonic() - started
        cleanup.kill_process_group_and_leader(pid)
        _, wait_status, usage = os.wait4(pid, 0)
        cleanup.kill_and_reap_all_children()
        pipes.drain_all()  # every writer is dead now, so this reaches the end
    finally:
        pipes.close()
    observation = Observation(
        verdict=bytes(pipes.verdict),
        verdict_overflow=pipes.verdict_overflow,
        output=pipes.output.text(),
        wait_status=wait_status,
        cpu_s=usage.ru_utime + usage.ru_stime,
        timed_out=timed_out,
    )
    status, feedback = decide(observation, nonce, pid, limits)
    return Outcome(status=status, feedback=feedback, wall_s=round(wall_s, 6))
