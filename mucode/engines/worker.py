"""Run a backend object in a separate process and call its methods over a pipe.

The GPU engine lives in a child process so that killing the child frees every byte of GPU
memory before training starts. The child is started with ``spawn`` (no inherited CUDA or
thread state), becomes the leader of a new process group (so the processes the backend
starts die with it), imports and builds the backend from an import path, then serves
calls until told to close or until the parent disappears.

Protocol (pickled tuples over a ``multiprocessing`` pipe):

* child -> parent once: ``("ready", None)`` or ``("error", message)``
* parent -> child: ``("call", method, args)``; reply ``("ok", result)`` or ``("error", message)``
* parent -> child: ``("close",)``; the child calls ``backend.close()``, replies
  ``("closed", None)`` and exits.

This module knows nothing about SGLang or models; any class with the called methods and a
``close()`` can be served.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Mapping
from multiprocessing.connection import Connection
from typing import Any

from mucode.engines.errors import WorkerError

POLL_INTERVAL_S = 0.5


def import_object(path: str) -> Any:
    """The object at ``"package.module:attribute"``."""
    module_name, _, attribute = path.partition(":")
    if not attribute:
        raise ValueError(f"import path {path!r} must look like 'package.module:Name'")
    return getattr(importlib.import_module(module_name), attribute)


def error_text(error: BaseException) -> str:
    """One line naming an exception raised in the child (the traceback goes to stderr)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def serve(connection: Connection, backend_path: str, backend_kwargs: dict[str, Any], env: dict[str, str]) -> None:
    """The child process: build the backend, then answer calls until ``close`` or EOF."""
    os.setsid()  # own process group: the parent can kill everything the backend starts
    os.environ.update(env)
    try:
        backend = import_object(backend_path)(**backend_kwargs)
    except BaseException as error:
        traceback.print_exc()
        connection.send(("error", error_text(error)))
        return
    connection.send(("ready", None))
    try:
        while True:
            try:
                message = connection.recv()
            except EOFError:
                break  # the parent is gone
            if message[0] == "close":
                break
            _, method, args = message
            try:
                connection.send(("ok", getattr(backend, method)(*args)))
            except Exception as error:
                traceback.print_exc()
                connection.send(("error", error_text(error)))
    finally:
        backend.close()
    try:
        connection.send(("closed", None))
    except (BrokenPipeError, OSError):
        pass


class WorkerProcess:
    """The parent's handle on a backend running in a child process."""

    def __init__(
        self,
        backend_path: str,
        backend_kwargs: Mapping[str, Any],
        env: Mapping[str, str] | None = None,
        startup_timeout_s: float = 900.0,
        name: str = "engine worker",
    ) -> None:
        self.name = name
        context = multiprocessing.get_context("spawn")
        self.connection, child_connection = context.Pipe()
        # Not a daemon: daemonic processes may not start children, and backends do.
        self.process = context.Process(
            target=serve,
            args=(child_connection, backend_path, dict(backend_kwargs), dict(env or {})),
            name=name,
        )
        self.process.start()
        child_connection.close()
        self.closed = False
        try:
            self.receive(expected="ready", timeout_s=startup_timeout_s)
        except BaseException:
            self.kill()
            raise

    @property
    def pid(self) -> int:
        return int(self.process.pid or 0)

    def call(self, method: str, *args: Any) -> Any:
        """Run ``backend.method(*args)`` in the child and return its result."""
        if self.closed:
            raise WorkerError(f"{self.name} is closed: create a new engine")
        self.connection.send(("call", method, args))
        return self.receive(expected="ok", timeout_s=None)

    def receive(self, expected: str, timeout_s: float | None) -> Any:
        """Wait for the child's next message, failing fast if the child dies."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self.connection.poll(POLL_INTERVAL_S):
            if not self.process.is_alive():
                raise WorkerError(
                    f"{self.name} exited with code {self.process.exitcode}: see its stderr above"
                )
            if deadline is not None and time.monotonic() > deadline:
                raise WorkerError(f"{self.name} did not answer within {timeout_s:.0f} s")
        kind, payload = self.connection.recv()
        if kind == "error":
            raise WorkerError(f"{self.name} failed: {payload}")
        if kind != expected:
            raise WorkerError(f"{self.name} sent {kind!r} where {expected!r} was expected")
        return payload

    def close(self, timeout_s: float = 60.0) -> None:
        """Ask the backend to shut down, then make sure its whole process group is gone."""
        if self.closed:
            return
        self.closed = True
        try:
            if self.process.is_alive():
                self.connection.send(("close",))
                self.receive(expected="closed", timeout_s=timeout_s)
                self.process.join(timeout_s)
        except (WorkerError, BrokenPipeError, EOFError, OSError):
            pass  # a stuck or dead child is killed below
        finally:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the child's process group (the backend's own children included)."""
        self.closed = True
        if self.process.pid is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass  # the group is gone, or the child died before it made one
        if self.process.is_alive():
            self.process.kill()
        self.process.join(10.0)
        self.connection.close()
