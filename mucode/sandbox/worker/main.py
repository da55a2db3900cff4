"""The worker process: isolate once, then run jobs from the host one at a time.

Started by the host as `python3 -I -S -c BOOTSTRAP DIR --mode local|container`, it talks
over its stdin/stdout in frames (protocol.py): it first sends a hello (its source hash and
which isolation features it has), then answers each job {"type": "run", "seq", "code",
"tests", "timeout_s", "memory_mb"} with {"type": "verdict", "seq", "status", "feedback",
"wall_s"} (or {"type": "rejected", "seq", "reason"} for a malformed job). After each reply
it removes what the program left (files, IPC objects); if that fails it exits, and the host
starts a fresh worker. It exits when its stdin closes. Common standard modules are
imported here once, so each forked child starts warm.
"""

import argparse
import gc
import os
import signal
import stat
import sys
from collections.abc import Sequence

from . import cleanup, libc
from .confine import ChildSetup, scrub_environment
from .isolation import Isolation, container_isolation, hidden_from_others, isolate_local_worker
from .limits import JobError, limits_from_job
from .protocol import encode_frame, fd_reader, read_frame, write_all
from .supervise import run_job
from .version import worker_source_hash

PRELOADED_MODULES = (
    "abc",
    "array",
    "bisect",
    "cmath",
    "collections",
    "collections.abc",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "enum",
    "fractions",
    "functools",
    "hashlib",
    "heapq",
    "io",
    "itertools",
    "json",
    "math",
    "operator",
    "random",
    "re",
    "statistics",
    "string",
    "struct",
    "textwrap",
    "time",
    "typing",
    "unicodedata",
    "traceback",
    "linecache",
    "tempfile",
)


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="worker", description=__doc__)
    parser.add_argument("--mode", choices=("local", "container"), required=True)
    parser.add_argument("--scratch-mb", type=int, default=256, help="size of the work root tmpfs (local mode)")
    return parser.parse_args(argv)


def _ignore_interrupting_signals() -> None:
    # The host stops a worker with SIGKILL or by closing stdin; nothing else may end it.
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(number, signal.SIG_IGN)


def _take_protocol_fds() -> tuple:
    """Move the host channel off fds 0/1 so stray prints cannot corrupt it."""
    channel_in, channel_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    return channel_in, channel_out


def _preload() -> None:
    import site

    site.setquit()  # `exit()` and `quit()` exist as in `python3 file`, although -S skipped site
    for name in PRELOADED_MODULES:
        __import__(name)
    gc.freeze()  # keep the collector off these objects, so forked children share their pages


def stdlib_path(worker_parent: str) -> tuple:
    return tuple(entry for entry in sys.path if entry and os.path.abspath(entry) != worker_parent)


def _handle(job: dict, setup: ChildSetup) -> dict:
    seq = job.get("seq")
    try:
        if job.get("type") != "run":
            raise JobError(f"unknown job type {job.get('type')!r}: expected 'run'")
        code, tests = job.get("code"), job.get("tests")
        if not isinstance(code, str) or not isinstance(tests, str):
            raise JobError("job fields code and tests must both be strings")
        limits = limits_from_job(job)
    except JobError as exc:
        return {"type": "rejected", "seq": seq, "reason": str(exc)}
    outcome = run_job(setup, limits, code, tests)
    return {
        "type": "verdict",
        "seq": seq,
        "status": outcome.status,
        "feedback": outcome.feedback,
        "wall_s": outcome.wall_s,
    }


def _after_program(isolation: Isolation, work_root_mode: int) -> None:
    cleanup.empty_directory(isolation.work_root, work_root_mode)
    if isolation.features.get("ipc_namespace"):
        cleanup.remove_ipc_objects()


def serve(channel_in: int, channel_out: int, isolation: Isolation, setup: ChildSetup) -> int:
    read_exact = fd_reader(channel_in)
    work_root_mode = stat.S_IMODE(os.stat(isolation.work_root).st_mode)
    while True:
        job = read_frame(read_exact)
        if job is None:
            return 0
        write_all(channel_out, encode_frame(_handle(job, setup)))
        _after_program(isolation, work_root_mode)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    _ignore_interrupting_signals()
    source_hash = worker_source_hash()  # before isolation may hide the worker's own files
    worker_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    stdlib = stdlib_path(worker_parent)
    if arguments.mode == "local":
        # The folder holding the checkout (…/mucode/sandbox -> the checkout -> its parent).
        around_checkout = os.path.dirname(os.path.dirname(os.path.dirname(worker_parent)))
        isolation = isolate_local_worker(
            arguments.scratch_mb, keep_visible=(*stdlib, sys.executable), also_hide=(around_checkout,)
        )
    else:
        isolation = container_isolation()
    channel_in, channel_out = _take_protocol_fds()
    scrub_environment(isolation.work_root)
    _preload()
    libc.prctl(libc.PR_SET_DUMPABLE, 0)  # closes /proc/<worker>/{fd,mem,environ} to programs
    libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 1)  # orphans come back to the worker to be killed
    setup = ChildSetup(isolation.work_root, isolation.uid, isolation.gid, os.getpid(), stdlib)
    hidden = hidden_from_others(setup.stdlib_path) if setup.uid is not None else ()
    if hidden:
        raise SystemExit(
            f"mucode sandbox worker: programs run as uid {setup.uid} but cannot read the standard library at "
            f"{', '.join(hidden)}; start the worker with an interpreter installed outside private directories "
            "(set MUCODE_SANDBOX_PYTHON, e.g. to /usr/bin/python3)"
        )
    hello = {
        "type": "hello",
        "worker_hash": source_hash,
        "python": sys.version.split()[0],
        "features": isolation.features,
    }
    write_all(channel_out, encode_frame(hello))
    return serve(channel_in, channel_out, isolation, setup)
