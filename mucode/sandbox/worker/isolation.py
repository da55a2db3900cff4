"""Isolate a worker once, when it starts; its children inherit all of it.

Local worker (started as root): one unshare(2) gives it a private network namespace (only
its own loopback, brought up as in Docker's network none: no connection anywhere, the
host's loopback included), a private IPC namespace, a private mount namespace and a
private PID namespace. It then
forks; the child becomes PID 1 of the new namespace and is the real worker (programs
cannot signal it, and when it dies the kernel kills every program process), while the
original process only waits and mirrors its exit (the host kills the original; PDEATHSIG
takes the worker and so the whole namespace with it). In the private mount namespace every
mount that is writable is bind-remounted read-only (mount flags are per mount, so the
host's own mounts stay writable), home, project, data, cache, log and runtime directories
are covered by empty read-only tmpfs mounts (a program cannot read the datasets, the
repository or anyone's files), a fresh /proc shows only the namespace's processes,
/tmp becomes a small sticky tmpfs (the only writable place, the work root), and /dev/shm
an empty read-only tmpfs. Programs run as a uid/gid of their own (200000 + the worker's
pid: unused by any file or other process).

Fallback, where unshare is refused (no CAP_SYS_ADMIN): a private temporary directory as the
work root, the uid drop if root, and a child subreaper; network, mount, IPC and PID
isolation are then missing and reported as such in the worker's hello.

Container worker: Docker already provides all of this (network none, read-only root, a
tmpfs /tmp, private IPC and PIDs, non-root user), so nothing is done here.
"""

import atexit
import fcntl
import os
import shutil
import signal
import socket
import struct
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field

from . import libc

PROGRAM_ID_BASE = 200_000
CONTAINER_FALLBACK_ID = 65534  # if a container is (mis)configured to run the worker as root
_ISOLATING_NAMESPACES = libc.CLONE_NEWNS | libc.CLONE_NEWNET | libc.CLONE_NEWIPC | libc.CLONE_NEWPID
_SIOCSIFFLAGS = 0x8914
_LOOPBACK_UP = 0x1 | 0x8 | 0x40  # IFF_UP | IFF_LOOPBACK | IFF_RUNNING
_PER_MOUNT_FLAGS = {"nosuid": libc.MS_NOSUID, "nodev": libc.MS_NODEV, "noexec": libc.MS_NOEXEC}
# Host directories a program has no business reading (home and project trees, datasets,
# caches, logs, runtime sockets): covered with an empty read-only tmpfs, unless the
# interpreter lives inside one. Docker shows programs only the image, which has none of these.
HIDDEN_DIRECTORIES = (
    "/home",
    "/root",
    "/work",
    "/srv",
    "/mnt",
    "/media",
    "/opt",
    "/run",
    "/boot",
    "/var/lib",
    "/var/cache",
    "/var/log",
    "/var/mail",
    "/var/spool",
    "/var/tmp",
    "/var/backups",
)
# Never covered, whatever the caller asks: the system itself.
NEVER_HIDDEN = (
    "/",
    "/usr",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/bin",
    "/sbin",
    "/dev",
    "/proc",
    "/sys",
    "/tmp",
    "/var",
)
FEATURES = ("network_namespace", "mount_namespace", "ipc_namespace", "pid_namespace", "unprivileged_programs")


@dataclass(frozen=True)
class Isolation:
    work_root: str
    uid: int | None  # the programs' uid/gid; None: programs keep the worker's
    gid: int | None
    features: dict[str, bool] = field(default_factory=dict)


def hidden_from_others(paths: tuple[str, ...]) -> tuple[str, ...]:
    """The paths an unrelated unprivileged uid cannot read (some ancestor lacks o+x, or it lacks o+r)."""
    hidden = []
    for path in paths:
        absolute = os.path.abspath(path)
        ancestors = [absolute]
        while ancestors[-1] != "/":
            ancestors.append(os.path.dirname(ancestors[-1]))
        try:
            traversable = all(os.stat(ancestor).st_mode & 0o001 for ancestor in ancestors[1:])
            readable = os.stat(absolute).st_mode & 0o004
        except FileNotFoundError:
            continue  # e.g. the python3XX.zip entry that most installations lack
        if not (traversable and readable):
            hidden.append(path)
    return tuple(hidden)


def _all_features(value: bool) -> dict[str, bool]:
    return {name: value for name in FEATURES}


def container_isolation() -> Isolation:
    program_id = CONTAINER_FALLBACK_ID if os.geteuid() == 0 else None
    return Isolation("/tmp", program_id, program_id, _all_features(True))


def writable_mounts(mountinfo: str) -> Iterator[tuple[str, int]]:
    """(mount point, per-mount flags to keep) of every mount not already read-only."""
    for line in mountinfo.splitlines():
        fields = line.split()
        target = fields[4].encode().decode("unicode_escape")  # octal escapes such as \040
        options = fields[5].split(",")
        if "ro" in options:
            continue
        yield target, sum(flag for name, flag in _PER_MOUNT_FLAGS.items() if name in options)


def directories_to_hide(candidates: tuple[str, ...], keep_visible: tuple[str, ...]) -> tuple[str, ...]:
    """The candidates that hold none of the paths that must stay visible."""

    def holds(directory: str, path: str) -> bool:
        return any(
            resolved == directory or resolved.startswith(directory + "/")
            for resolved in (os.path.abspath(path), os.path.realpath(path))
        )

    hidden = [
        directory
        for directory in candidates
        if directory not in NEVER_HIDDEN
        and os.path.isdir(directory)
        and not any(holds(directory, path) for path in keep_visible)
    ]
    # A directory inside another hidden one is gone once that one is covered: mounting on it
    # would fail (a checkout at /work/wt/<name> adds /work/wt beside /work).
    return tuple(
        directory for directory in dict.fromkeys(hidden)
        if not any(directory.startswith(outer + "/") for outer in hidden if outer != directory)
    )


def _make_everything_read_only() -> None:
    with open("/proc/self/mountinfo") as mountinfo:
        mounts = list(writable_mounts(mountinfo.read()))
    for target, keep_flags in mounts:
        try:
            libc.mount(None, target, None, libc.MS_REMOUNT | libc.MS_BIND | libc.MS_RDONLY | keep_flags)
        except OSError as exc:
            if target == "/":
                raise
            print(f"mucode sandbox worker: {target} stays writable by root only ({exc})", file=sys.stderr)


def _mount_private_filesystems(scratch_mb: int, hide: tuple[str, ...], keep_visible: tuple[str, ...]) -> None:
    # Private propagation first: nothing below may reach the host's mount table.
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
    _make_everything_read_only()
    hardened = libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC
    for directory in directories_to_hide(hide, keep_visible):
        libc.mount("tmpfs", directory, "tmpfs", hardened | libc.MS_RDONLY, "size=4k,mode=0755")
    libc.mount("proc", "/proc", "proc", hardened)
    # Root-owned and sticky, as Docker's tmpfs: programs create files but cannot chmod it.
    libc.mount("tmpfs", "/tmp", "tmpfs", hardened, f"size={scratch_mb}m,mode=1777")
    if os.path.isdir("/dev/shm"):
        libc.mount("tmpfs", "/dev/shm", "tmpfs", hardened | libc.MS_RDONLY, "size=4k,mode=0755")


def _bring_up_private_loopback() -> None:
    """Programs see a working 127.0.0.1 of their own (as in Docker's network none), nothing else."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as handle:
        fcntl.ioctl(handle, _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", _LOOPBACK_UP))


def _let_programs_signal_init(program_id: int) -> None:
    """Make kill(worker) by a program silently ineffective, as it is in Docker.

    With the programs' uid as the worker's saved uid, a program may send it signals, and
    the kernel drops them all: the worker is PID 1 of its namespace and ignores or has no
    handler for every signal. Without this, kill() would fail with EPERM here and succeed
    (to no effect) in Docker: the same program would get different verdicts. Ptrace,
    prlimit and /proc access still need the real uid too, which stays root.
    """
    os.setresuid(0, 0, program_id)


def _become_namespace_init() -> None:
    """Fork; return in the child (PID 1 of the new PID namespace); the parent never returns."""
    child = os.fork()
    if child == 0:
        libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
        return
    os.close(0)
    os.close(1)
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)


def _fallback(program_id: int | None, reason: str) -> Isolation:
    print(
        f"mucode sandbox worker: no namespaces ({reason}); programs share the host's network, /tmp and IPC",
        file=sys.stderr,
    )
    work_root = tempfile.mkdtemp(prefix="mucode-sandbox-")  # mode 0700
    atexit.register(shutil.rmtree, work_root, True)
    if program_id is not None:
        os.chown(work_root, program_id, program_id)
    features = _all_features(False)
    features["unprivileged_programs"] = program_id is not None
    return Isolation(work_root, program_id, program_id, features)


def isolate_local_worker(scratch_mb: int, keep_visible: tuple[str, ...], also_hide: tuple[str, ...] = ()) -> Isolation:
    """Isolate this worker.

    keep_visible: paths programs need (the interpreter, its standard library); also_hide:
    directories to cover besides HIDDEN_DIRECTORIES (the folder around the checkout, where
    datasets tend to sit next to it).
    """
    program_id = PROGRAM_ID_BASE + os.getpid() if os.geteuid() == 0 else None
    try:
        libc.unshare(_ISOLATING_NAMESPACES)
    except OSError as exc:
        return _fallback(program_id, str(exc))
    _become_namespace_init()
    _mount_private_filesystems(scratch_mb, HIDDEN_DIRECTORIES + also_hide, keep_visible)
    _bring_up_private_loopback()
    if program_id is not None:
        _let_programs_signal_init(program_id)
    features = _all_features(True)
    features["unprivileged_programs"] = program_id is not None
    return Isolation("/tmp", program_id, program_id, features)
