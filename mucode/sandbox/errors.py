"""The sandbox's exceptions (host side). Each message says what went wrong and what to do."""


class SandboxError(RuntimeError):
    """The sandbox itself failed (not a program): a worker could not start or misbehaved."""


class SandboxUnavailable(SandboxError):
    """The requested backend cannot run here (no Docker engine, no sandbox image)."""


class WorkerDied(SandboxError):
    """A worker's channel closed or stalled mid-job; the pool replaces the worker."""


class StaleWorker(SandboxError):
    """A worker (usually inside an old image) runs different code from this checkout."""
