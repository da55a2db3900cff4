"""The Docker backend's workers: a few long-lived containers, each running the worker.

Each container is started once per worker slot from the sandbox image and reused for the
whole batch (no per-program container start): network none, read-only root file system,
a tmpfs /tmp as the only writable place, a private IPC namespace without /dev/shm, every
capability dropped, no-new-privileges, a random non-root uid per container (so process
counts of different containers never share one RLIMIT_NPROC), pids and memory limits, no
log driver, and (with the cgroupfs driver) a cgroup directly under the root, so each
container gets the CPU weight of one process, as a local worker does. The worker is the
container's PID 1 and talks over the attached stdin/stdout (Docker multiplexes stdout and
stderr on the socket; DockerConnection splits them).
Also builds the image (build_image) and says whether the backend is usable
(docker_available). The Docker SDK is imported lazily so `import mucode.sandbox` stays light.
"""

import os
import random
import socket
import struct
import time
from pathlib import Path
from typing import Any

from .client import WORKER_DIR, WorkerClient
from .errors import SandboxError, SandboxUnavailable, WorkerDied
from .local import SCRATCH_MB, worker_command

IMAGE_ENV = "MUCODE_SANDBOX_IMAGE"
DEFAULT_IMAGE = "mucode-sandbox:latest"
DEFAULT_BASE_IMAGE = "python:3.12-slim"
DOCKERFILE = Path(__file__).resolve().parents[2] / "containers" / "sandbox.Dockerfile"
IMAGE_WORKER_PARENT = "/opt/mucode-sandbox"
CONTAINER_LABEL = "mucode.sandbox"
OWNER_LABEL = "mucode.sandbox.owner-pid"  # the host process that started the container
PIDS_LIMIT = 64  # the worker, the program and up to RLIMIT_NPROC (32) of its processes
MEMORY_HEADROOM_MB = 512  # above the program's own limit: the worker and the /tmp tmpfs
_API_TIMEOUT_S = 60
_PROBE_TIMEOUT_S = 5  # a hung engine must not stall the choice of backend
_STDERR_TAIL = 4000
_FRAME_HEADER = struct.Struct(">BxxxL")  # Docker's stream multiplexing: stream id, length


def sandbox_image() -> str:
    return os.environ.get(IMAGE_ENV, DEFAULT_IMAGE)


def _docker_client(timeout_s: float = _API_TIMEOUT_S) -> Any:
    import docker  # the SDK; lazily, it is slow to import

    return docker.from_env(timeout=timeout_s)


def docker_available(image: str = "") -> bool:
    """True if a Docker engine answers here and has the sandbox image (so the backend can run)."""
    try:
        client = _docker_client(timeout_s=_PROBE_TIMEOUT_S)
        client.ping()
        client.images.get(image or sandbox_image())
        return True
    except Exception:  # no SDK config, no socket, no daemon, no image: all mean "not usable"
        return False


def build_image(base_image: str = DEFAULT_BASE_IMAGE, tag: str = DEFAULT_IMAGE) -> str:
    """Build the sandbox image from containers/sandbox.Dockerfile on base_image; return its id."""
    import docker

    if not DOCKERFILE.is_file():
        raise SandboxError(f"{DOCKERFILE} is missing: build from a full checkout of the repository")
    try:
        image, _logs = _docker_client().images.build(
            path=str(WORKER_DIR),
            dockerfile=str(DOCKERFILE),
            buildargs={"BASE_IMAGE": base_image},
            tag=tag,
            rm=True,
            forcerm=True,
            network_mode="none",  # the build needs nothing from a network
        )
    except docker.errors.BuildError as exc:
        raise SandboxError(f"building {tag} on {base_image} failed: {exc}") from None
    except docker.errors.DockerException as exc:
        raise SandboxUnavailable(
            f"cannot build {tag}: no usable Docker engine ({exc}); run bash containers/setup-docker.sh"
        ) from None
    return image.id


class DockerConnection:
    """A started container and its attach socket, demultiplexed."""

    def __init__(self, container: Any) -> None:
        self._container = container
        self.short_id: str = container.short_id
        # Attach before start, so not a byte of the worker's output is missed.
        self._attached = container.attach_socket(params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        self._socket: socket.socket = self._attached._sock
        container.start()
        self._pending = bytearray()  # raw multiplexed bytes not yet split
        self._stdout = bytearray()
        self._stderr = bytearray()
        self._closed = False

    def send(self, data: bytes) -> None:
        try:
            self._socket.sendall(data)
        except OSError as exc:
            raise WorkerDied(f"sandbox container {self.short_id} is gone ({exc})") from None

    def _split(self, chunk: bytes) -> None:
        self._pending += chunk
        while len(self._pending) >= _FRAME_HEADER.size:
            stream, length = _FRAME_HEADER.unpack_from(self._pending)
            end = _FRAME_HEADER.size + length
            if len(self._pending) < end:
                return
            payload = bytes(self._pending[_FRAME_HEADER.size : end])
            del self._pending[:end]
            if stream == 2:
                self._stderr = (self._stderr + payload)[-_STDERR_TAIL:]
            else:
                self._stdout += payload

    def recv_exact(self, size: int, deadline: float) -> bytes:
        while len(self._stdout) < size:
            wait_s = deadline - time.monotonic()
            if wait_s <= 0:
                raise WorkerDied(f"sandbox container {self.short_id} did not answer in time")
            self._socket.settimeout(wait_s)
            try:
                chunk = self._socket.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError as exc:
                raise WorkerDied(f"sandbox container {self.short_id}: {exc}") from None
            if not chunk:
                break
            self._split(chunk)
        taken = bytes(self._stdout[:size])
        del self._stdout[:size]
        return taken

    def diagnostics(self) -> str:
        return self._stderr.decode("utf-8", errors="replace").strip() or "(empty)"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._socket.close()
        except OSError:
            pass
        try:
            self._container.remove(force=True)
        except Exception:  # already gone (auto-removed) or the engine went away: nothing left to stop
            pass


def cgroup_parent_for(cgroup_driver: str) -> str | None:
    """Where the containers' cgroups go: directly under the root where the engine allows it.

    Under the engine's own group (the default) all sandbox containers together get the CPU
    weight of a single process, so on a busy machine N Docker workers get far less CPU than
    N local workers. Directly under the root each container weighs as one process, as a
    local worker does. Only the cgroupfs driver takes a plain path; systemd wants a slice.
    """
    return "/" if cgroup_driver == "cgroupfs" else None


def container_options(image: str, memory_mb: int, program_uid: int, cgroup_parent: str | None = None) -> dict:
    """The keyword arguments of containers.create for one sandbox worker."""
    from docker.types import LogConfig

    memory = f"{memory_mb + MEMORY_HEADROOM_MB}m"
    return {
        "image": image,
        "command": worker_command("python3", IMAGE_WORKER_PARENT, "container"),
        "user": f"{program_uid}:{program_uid}",
        "working_dir": IMAGE_WORKER_PARENT,
        "stdin_open": True,
        "detach": False,  # with stdin_open: StdinOnce, so the worker sees end-of-input when the host goes away
        "network_mode": "none",
        "ipc_mode": "none",
        "read_only": True,
        "tmpfs": {"/tmp": f"rw,nosuid,nodev,noexec,size={SCRATCH_MB}m,mode=1777"},
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "pids_limit": PIDS_LIMIT,
        "mem_limit": memory,
        "memswap_limit": memory,
        "auto_remove": True,
        "hostname": "sandbox",
        "labels": {CONTAINER_LABEL: "worker", OWNER_LABEL: str(os.getpid())},
        "log_config": LogConfig(type=LogConfig.types.NONE),
        **({"cgroup_parent": cgroup_parent} if cgroup_parent else {}),
    }


def start_docker_worker(memory_mb: int, image: str = "") -> WorkerClient:
    import docker

    try:
        client = _docker_client()
        parent = cgroup_parent_for(client.info().get("CgroupDriver", ""))
        options = container_options(image or sandbox_image(), memory_mb, random.randrange(300_000, 1_300_000), parent)
        connection = DockerConnection(client.containers.create(**options))
    except docker.errors.ImageNotFound:
        raise SandboxUnavailable(
            f"no sandbox image {image or sandbox_image()}: "
            "build it with `mucode sandbox build` or bash containers/setup-docker.sh"
        ) from None
    except docker.errors.DockerException as exc:
        raise SandboxUnavailable(f"cannot start a sandbox container: {exc}") from None
    try:
        return WorkerClient(connection, f"sandbox container {connection.short_id}")
    except BaseException:
        connection.close()
        raise


def running_sandbox_containers(owner_pid: int | None = None) -> list[str]:
    """Ids of the sandbox worker containers that exist now, optionally only those of one host process."""
    label = CONTAINER_LABEL if owner_pid is None else f"{OWNER_LABEL}={owner_pid}"
    # The low-level listing: the high-level one inspects each container and trips over auto-removal.
    return [entry["Id"] for entry in _docker_client().api.containers(all=True, filters={"label": label})]
