"""Lock down the freshly forked child before it runs any untrusted code.

In order: a new session (its own process group, so the worker can kill the whole tree),
default signal handlers, file descriptors reduced to stdin=/dev/null, stdout+stderr=the
bounded output pipe and fd 3=the verdict pipe, the working directory, resource limits
(address space, CPU seconds, processes, file size, open files, no core dumps, no POSIX
message queues), a high OOM score (the kernel kills programs before anything else), the
drop to the worker's unprivileged uid/gid (RLIMIT_NPROC does not bind root, so a fork bomb
is only contained after this), fresh kernel keyrings, no-new-privileges, death with the
worker, and a scrubbed environment and interpreter state. Network, mounts and IPC are
isolated once per worker (isolation.py), not here. Raises on any failure; the caller then
exits the child.
"""

import errno
import os
import random
import resource
import signal
import sys
from dataclasses import dataclass

from . import libc
from .feedback import SOLUTION_FILE
from .limits import Limits

VERDICT_FD = 3
_MEBIBYTE = 1024 * 1024


@dataclass(frozen=True)
class ChildSetup:
    work_root: str  # the fresh, writable working directory (wiped between programs)
    uid: int | None  # drop to this uid/gid; None keeps the worker's (already unprivileged)
    gid: int | None
    worker_pid: int
    stdlib_path: tuple[str, ...]  # sys.path entries of the standard library


def safe_environment(work_root: str) -> dict:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": work_root,
        "TMPDIR": work_root,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
    }


def _reset_signals() -> None:
    for number in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM):
        signal.signal(number, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # As in a fresh interpreter: a broken pipe or a too-large file raises, it does not kill.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def _arrange_fds(verdict_w: int, output_w: int) -> None:
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(output_w, 1)
    os.dup2(output_w, 2)
    if verdict_w != VERDICT_FD:
        os.dup2(verdict_w, VERDICT_FD, inheritable=False)
    # Everything else goes, above all the worker's channel to the host.
    os.closerange(VERDICT_FD + 1, 1 << 20)


def _limit(kind: int, soft: int, hard: int | None = None) -> None:
    _, current_hard = resource.getrlimit(kind)
    hard = soft if hard is None else hard
    if current_hard != resource.RLIM_INFINITY:  # unprivileged: limits can only go down
        soft, hard = min(soft, current_hard), min(hard, current_hard)
    resource.setrlimit(kind, (soft, hard))


def _set_resource_limits(limits: Limits) -> None:
    _limit(resource.RLIMIT_AS, limits.memory_mb * _MEBIBYTE)
    _limit(resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 1)
    _limit(resource.RLIMIT_NPROC, limits.max_processes)
    _limit(resource.RLIMIT_FSIZE, limits.max_file_mb * _MEBIBYTE)
    _limit(resource.RLIMIT_NOFILE, limits.max_open_files)
    _limit(resource.RLIMIT_CORE, 0)
    _limit(resource.RLIMIT_MSGQUEUE, 0)


def _raise_oom_score() -> None:
    try:
        with open("/proc/self/oom_score_adj", "w") as adj:
            adj.write("1000")
    except OSError:
        pass  # a best-effort extra; the address-space limit is the memory bound


def _drop_privileges(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise PermissionError(f"could not drop the child to uid/gid {uid}/{gid}")


def _fresh_keyrings() -> None:
    """Kernel keys outlive processes: a previous program could leave some for this one.

    A new, empty session keyring replaces the one inherited from the worker, and the uid's
    user keyrings are emptied. Where keyctl is refused (Docker's seccomp profile) no
    program can store keys either.
    """
    for operation, argument in (
        (libc.KEYCTL_JOIN_SESSION_KEYRING, None),
        (libc.KEYCTL_CLEAR, libc.KEY_SPEC_USER_KEYRING),
        (libc.KEYCTL_CLEAR, libc.KEY_SPEC_USER_SESSION_KEYRING),
    ):
        try:
            libc.keyctl(operation, argument)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EACCES, errno.ENOSYS):
                raise


def _die_with_worker(worker_pid: int) -> None:
    libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)  # after the uid change, which clears it
    if os.getppid() != worker_pid:
        raise RuntimeError("the worker died while the child was starting")


def scrub_environment(work_root: str) -> None:
    """Replace the worker's own environment by the programs' one, once, before any fork.

    Children inherit it, so none of them pays for clearing a dict it shares copy-on-write
    with the worker (each page written in a child costs a fault: ~0.8 ms per program here).
    """
    os.environ.clear()
    os.environ.update(safe_environment(work_root))


def _reset_interpreter(setup: ChildSetup) -> None:
    if os.environ.get("HOME") != setup.work_root:  # a worker that did not scrub its environment
        scrub_environment(setup.work_root)
    sys.argv[:] = [SOLUTION_FILE]
    sys.path[:] = [setup.work_root, *setup.stdlib_path]
    # Only the work directory's finder can be stale (the worker never imports from there);
    # clearing the whole cache would write every page it spans.
    sys.path_importer_cache.pop(setup.work_root, None)
    encoding = {"encoding": "utf-8", "closefd": False}
    sys.stdin = sys.__stdin__ = open(0, errors="surrogateescape", **encoding)
    sys.stdout = sys.__stdout__ = open(1, "w", buffering=1, errors="backslashreplace", **encoding)
    sys.stderr = sys.__stderr__ = open(2, "w", buffering=1, errors="backslashreplace", **encoding)
    if "tempfile" in sys.modules:
        sys.modules["tempfile"].tempdir = None  # the worker's cached choice is not the child's
    random.seed()  # every child of a worker would otherwise draw the same numbers


def confine_child(setup: ChildSetup, limits: Limits, verdict_w: int, output_w: int) -> int:
    """Lock the current (child) process down; return the verdict fd."""
    os.setsid()
    _reset_signals()
    _arrange_fds(verdict_w, output_w)
    os.chdir(setup.work_root)
    _set_resource_limits(limits)
    _raise_oom_score()
    if setup.uid is not None and setup.gid is not None:
        _drop_privileges(setup.uid, setup.gid)
    _fresh_keyrings()
    _die_with_worker(setup.worker_pid)
    _reset_interpreter(setup)
    return VERDICT_FD
