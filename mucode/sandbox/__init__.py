"""The execution sandbox: run untrusted programs with their tests, get honest verdicts.

Two backends behind one interface: `local` (warm worker processes on this machine, isolated
by namespaces and an unprivileged uid) and `docker` (the same worker inside a few
long-lived locked-down containers). See worker/ for what runs programs, pool.py for the
batching, files.py for the file-to-file entry point (execute_file, `mucode execute`).

    with make_sandbox() as sandbox:
        verdicts = sandbox.run([Program("p1", code, tests)])
"""

from .errors import SandboxError, SandboxUnavailable
from .factory import docker_available, make_sandbox
from .pool import Sandbox
from .program import STATUSES, Program, Status, Verdict


def __getattr__(name: str):
    # execute_file needs polars; importing it lazily keeps `import mucode.sandbox` light.
    if name == "execute_file":
        from .files import execute_file

        return execute_file
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Program",
    "Verdict",
    "Status",
    "STATUSES",
    "Sandbox",
    "SandboxError",
    "SandboxUnavailable",
    "make_sandbox",
    "docker_available",
    "execute_file",
]
