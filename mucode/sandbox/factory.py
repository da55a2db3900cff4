"""make_sandbox: choose a backend, check the settings, start the workers.

"auto" means docker where a Docker engine with the sandbox image is reachable, else local.
Does not run programs (pool.Sandbox does).
"""

import os
from functools import partial

from .errors import SandboxUnavailable
from .pool import Sandbox
from .worker.limits import MIN_MEMORY_MB

BACKENDS = ("auto", "local", "docker")


def docker_available() -> bool:
    """True if a Docker engine answers here and has the sandbox image."""
    from .docker import docker_available as engine_and_image_present

    return engine_and_image_present()


def resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown sandbox backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "docker" if docker_available() else "local"
    return backend


def check_settings(workers: int, timeout_s: float, memory_mb: int) -> None:
    """Raise ValueError naming the first bad setting."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not 0 < timeout_s <= 3600:
        raise ValueError(f"timeout_s must be a number of seconds in (0, 3600], got {timeout_s!r}")
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < MIN_MEMORY_MB:
        raise ValueError(f"memory_mb must be an integer >= {MIN_MEMORY_MB}, got {memory_mb!r}")


def make_sandbox(
    backend: str = "auto", workers: int | None = None, timeout_s: float = 10.0, memory_mb: int = 1024
) -> Sandbox:
    """Start a pool of warm workers (default: one per core) on the chosen backend."""
    workers = (os.cpu_count() or 1) if workers is None else workers
    check_settings(workers, timeout_s, memory_mb)
    chosen = resolve_backend(backend)
    if chosen == "docker":
        from .docker import start_docker_worker

        if backend == "docker" and not docker_available():
            raise SandboxUnavailable(
                "docker backend requested but no Docker engine with the sandbox image is reachable: "
                "run bash containers/setup-docker.sh, or use backend='local'"
            )
        return Sandbox("docker", partial(start_docker_worker, memory_mb), workers, float(timeout_s), memory_mb)
    from .local import start_local_worker

    return Sandbox("local", start_local_worker, workers, float(timeout_s), memory_mb)
