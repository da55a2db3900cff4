"""Leave nothing of a finished program behind: processes, files, System V IPC objects.

Processes: the program's process group is killed, then every remaining child of the
worker (orphans are re-parented to it: it is PID 1 of its namespace, or a child
subreaper) is killed and reaped until none is left, so no zombie and no grandchild
survives, whatever sessions or groups it made. Files: the work root is emptied (the
program may have made entries unreadable; the owner can always chmod them back).
IPC: System V objects in the worker's private IPC namespace are removed. Does not decide
when to run (supervise.py and main.py do); raises if something cannot be cleaned, so the
worker stops rather than let state reach the next program.
"""

import os
import signal
import stat
import time

from . import libc

REAP_DEADLINE_S = 10.0


def _signal_quietly(send, target: int) -> None:
    try:
        send(target, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_process_group_and_leader(pid: int) -> None:
    """SIGKILL the child's process group (its pgid is its pid after setsid) and the child."""
    _signal_quietly(os.killpg, pid)
    _signal_quietly(os.kill, pid)


def _own_children() -> list:
    path = f"/proc/self/task/{os.getpid()}/children"
    try:
        with open(path) as listing:
            return [int(pid) for pid in listing.read().split()]
    except FileNotFoundError:  # kernels without CONFIG_PROC_CHILDREN: scan every process
        return _children_by_scan()


def _children_by_scan() -> list:
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as status:
                    fields = status.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # it exited meanwhile
            if int(fields[1]) == me:
                found.append(int(entry))
    return found


def kill_and_reap_all_children(deadline_s: float = REAP_DEADLINE_S) -> None:
    """Kill and reap every child this worker still has, until it has none."""
    give_up = time.monotonic() + deadline_s
    while True:
        try:
            reaped, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # no children at all
        if reaped:
            continue
        for child in _own_children():
            kill_process_group_and_leader(child)
        if time.monotonic() > give_up:
            raise RuntimeError("program processes survived SIGKILL; stopping this worker")
        time.sleep(0.0005)


def remove_tree(top: str) -> None:
    """Remove a directory tree the program may have locked (mode 000): its owner, or root,
    can always give each directory rwx back first. Iterative, so any depth works."""
    directories = []
    pending = [top]
    while pending:
        directory = pending.pop()
        os.chmod(directory, stat.S_IRWXU)
        directories.append(directory)
        for entry in os.scandir(directory):
            if entry.is_dir(follow_symlinks=False):
                pending.append(entry.path)
            else:
                os.unlink(entry.path)
    for directory in reversed(directories):  # children were found after their parents
        os.rmdir(directory)


def empty_directory(root: str, mode: int) -> None:
    """Remove every entry inside root and give root back its permission bits `mode`."""
    if stat.S_IMODE(os.lstat(root).st_mode) != mode:
        os.chmod(root, mode)  # a program owning root may have changed them
    for entry in os.scandir(root):
        if entry.is_dir(follow_symlinks=False):
            remove_tree(entry.path)
        else:
            os.unlink(entry.path)
    if os.listdir(root):
        raise RuntimeError(f"could not empty the work directory {root}")


def remove_ipc_objects() -> int:
    """Remove every System V IPC object visible here; only call in a private IPC namespace."""
    removed = 0
    for kind in ("shm", "msg", "sem"):
        try:
            with open(f"/proc/sysvipc/{kind}") as table:
                rows = table.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            libc.remove_ipc_object(kind, int(row.split()[1]))
            removed += 1
    return removed
