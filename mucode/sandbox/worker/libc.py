"""ctypes bindings for the Linux calls the standard library lacks.

unshare(2), mount(2), prctl(2), keyctl(2) and removal of System V IPC objects. Each wrapper raises
OSError with the errno on failure. Does not decide when to call them (isolation.py,
confine.py and cleanup.py do).
"""

import ctypes
import errno
import os
import platform

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38

IPC_RMID = 0

KEYCTL_JOIN_SESSION_KEYRING = 1
KEYCTL_CLEAR = 7
KEY_SPEC_USER_KEYRING = -4
KEY_SPEC_USER_SESSION_KEYRING = -5
# glibc has no keyctl wrapper; the raw syscall number depends on the architecture.
_KEYCTL_SYSCALL = {"x86_64": 250, "aarch64": 219}.get(platform.machine())

_libc = ctypes.CDLL(None, use_errno=True)
_libc.unshare.argtypes = [ctypes.c_int]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.shmctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
_libc.msgctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
_libc.semctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _bytes_or_none(text: "str | None") -> "bytes | None":
    return None if text is None else text.encode()


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def mount(source: "str | None", target: str, fstype: "str | None", flags: int, data: "str | None" = None) -> None:
    _check(
        _libc.mount(_bytes_or_none(source), target.encode(), _bytes_or_none(fstype), flags, _bytes_or_none(data)),
        f"mount {target}",
    )


def prctl(option: int, value: int) -> None:
    _check(_libc.prctl(option, value, 0, 0, 0), f"prctl({option})")


def keyctl(operation: int, argument: int | None) -> None:
    """keyctl(operation, argument); ENOSYS where this architecture's syscall number is unknown."""
    if _KEYCTL_SYSCALL is None:
        raise OSError(errno.ENOSYS, f"keyctl: no syscall number for {platform.machine()}")
    _check(0 if _libc.syscall(_KEYCTL_SYSCALL, operation, argument) >= 0 else -1, f"keyctl({operation})")


def remove_ipc_object(kind: str, ident: int) -> None:
    """Remove one System V IPC object; kind is "shm", "msg" or "sem" (as in /proc/sysvipc)."""
    if kind == "shm":
        _check(_libc.shmctl(ident, IPC_RMID, None), "shmctl(IPC_RMID)")
    elif kind == "msg":
        _check(_libc.msgctl(ident, IPC_RMID, None), "msgctl(IPC_RMID)")
    elif kind == "sem":
        _check(_libc.semctl(ident, 0, IPC_RMID), "semctl(IPC_RMID)")
    else:
        raise ValueError(f"unknown System V IPC kind {kind!r}: use 'shm', 'msg' or 'sem'")
