"""The sandbox's public API: settings checks, batching, ordering, progress, worker
replacement, stale images, backend choice, and the isolation each backend really has."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mucode.sandbox import Program, SandboxError, SandboxUnavailable, Verdict, docker_available, make_sandbox
from sandbox_support import require_docker
from mucode.sandbox.client import WorkerClient
from mucode.sandbox.docker import build_image, cgroup_parent_for, running_sandbox_containers
from mucode.sandbox.errors import StaleWorker
from mucode.sandbox.factory import resolve_backend
from mucode.sandbox.local import WORKER_PARENT, PipeConnection, choose_interpreter, worker_command
from mucode.sandbox.worker.protocol import encode_frame

ORDINARY = Program("ordinary", "def add(a, b):\n    return a + b\n", "assert add(2, 3) == 5\n")


@pytest.fixture(scope="module")
def local_sandbox():
    with make_sandbox("local", workers=2, timeout_s=5.0, memory_mb=256) as sandbox:
        yield sandbox


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"backend": "podman"}, "unknown sandbox backend 'podman'"),
        ({"workers": 0}, "workers must be a positive integer"),
        ({"timeout_s": 0}, "timeout_s must be a number of seconds"),
        ({"timeout_s": "10"}, "timeout_s must be a number of seconds"),
        ({"memory_mb": 10}, "memory_mb must be an integer >= 64"),
    ],
)
def test_bad_settings_fail_with_one_clear_line(settings, message):
    with pytest.raises(ValueError, match=message):
        make_sandbox(**settings)


def test_program_fields_are_checked_on_construction():
    with pytest.raises(TypeError, match="Program.code must be a str, got NoneType"):
        Program("p", None, "")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Program.id must be a str, got int"):
        Program(3, "", "")  # type: ignore[arg-type]


def test_run_rejects_non_programs(local_sandbox):
    with pytest.raises(TypeError, match=r"programs\[1\] is a dict"):
        local_sandbox.run([ORDINARY, {"id": "x"}])


def test_verdicts_come_back_in_input_order_with_progress(local_sandbox):
    # Later programs finish first, so input order must be restored explicitly.
    programs = [
        Program(f"p{index}", f"import time\ntime.sleep({0.3 - index * 0.05:.2f})\n", f"assert {index} % 3 != 2\n")
        for index in range(6)
    ]
    ticks = []
    verdicts = local_sandbox.run(programs, progress=ticks.append)
    assert [verdict.id for verdict in verdicts] == [program.id for program in programs]
    assert [verdict.status for verdict in verdicts] == ["passed", "passed", "failed", "passed", "passed", "failed"]
    assert ticks == [1] * 6
    assert all(isinstance(verdict, Verdict) and verdict.wall_s > 0 for verdict in verdicts)
    assert local_sandbox.run([]) == []


def test_backend_and_size_are_reported(local_sandbox):
    assert local_sandbox.backend == "local"
    assert local_sandbox.workers == 2


def test_local_worker_is_fully_isolated(local_sandbox):
    # Root here (and in CI): every layer must be present, else the hostile tests are unsafe.
    assert local_sandbox.isolation_features() == {
        "network_namespace": True,
        "mount_namespace": True,
        "ipc_namespace": True,
        "pid_namespace": True,
        "unprivileged_programs": True,
    }


def local_worker_pids() -> list:
    """Processes this test process started as local sandbox workers.

    Read from each process's parent pid rather than /proc/self/task/*/children: a child whose
    spawning thread has ended is re-parented to another thread and can be missing from both lists.
    """
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (proc / "cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue  # a process that just ended
        if parent == os.getpid() and b"worker.main" in b" ".join(command) and b"local" in command:
            pids.append(int(proc.name))
    return pids


def test_a_killed_worker_is_replaced_and_the_batch_completes():
    others = set(local_worker_pids())  # e.g. the module's sandbox
    with make_sandbox("local", workers=1, timeout_s=5.0, memory_mb=256) as sandbox:
        assert sandbox.run([ORDINARY])[0].passed
        (worker,) = set(local_worker_pids()) - others
        os.kill(worker, signal.SIGKILL)
        verdicts = sandbox.run([ORDINARY, ORDINARY])
        assert [verdict.status for verdict in verdicts] == ["passed", "passed"]
        assert sandbox.worker_restarts == 1
        (replacement,) = set(local_worker_pids()) - others
        assert replacement != worker


@pytest.mark.docker
def test_a_killed_container_is_replaced_and_the_batch_completes():
    require_docker()
    import docker

    before = set(running_sandbox_containers(os.getpid()))
    with make_sandbox("docker", workers=1, timeout_s=5.0, memory_mb=256) as sandbox:
        assert sandbox.run([ORDINARY])[0].passed
        (container,) = set(running_sandbox_containers(os.getpid())) - before
        docker.from_env().containers.get(container).kill()
        verdicts = sandbox.run([ORDINARY, ORDINARY])
        assert [verdict.status for verdict in verdicts] == ["passed", "passed"]
        assert sandbox.worker_restarts == 1
        assert container not in running_sandbox_containers(os.getpid())


def test_closing_stops_the_workers_and_refuses_new_batches():
    others = set(local_worker_pids())
    sandbox = make_sandbox("local", workers=2, timeout_s=5.0, memory_mb=256)
    started = set(local_worker_pids()) - others
    assert len(started) == 2
    sandbox.close()
    time.sleep(0.1)
    assert started.isdisjoint(local_worker_pids())
    with pytest.raises(SandboxError, match="this sandbox is closed"):
        sandbox.run([ORDINARY])


class ScriptedConnection:
    """A worker channel that plays back fixed frames (to test the host side alone)."""

    def __init__(self, *messages: dict) -> None:
        self._data = b"".join(encode_frame(message) for message in messages)
        self.closed = False

    def send(self, data: bytes) -> None:
        pass

    def recv_exact(self, size: int, deadline: float) -> bytes:
        chunk, self._data = self._data[:size], self._data[size:]
        return chunk

    def diagnostics(self) -> str:
        return "(scripted)"

    def close(self) -> None:
        self.closed = True


def test_a_worker_from_an_older_image_is_refused():
    connection = ScriptedConnection({"type": "hello", "worker_hash": "0" * 64, "features": {}})
    with pytest.raises(StaleWorker, match="rebuild the image"):
        WorkerClient(connection, "scripted worker")
    assert connection.closed


def test_explicit_docker_without_the_image_is_unavailable(monkeypatch):
    monkeypatch.setenv("MUCODE_SANDBOX_IMAGE", "mucode-sandbox:does-not-exist")
    assert not docker_available()
    assert resolve_backend("auto") == "local"
    with pytest.raises(SandboxUnavailable, match="setup-docker.sh"):
        make_sandbox("docker", workers=1)


@pytest.mark.docker
def test_auto_prefers_docker_where_it_is_available():
    require_docker()
    assert resolve_backend("auto") == "docker"


@pytest.mark.docker
def test_docker_workers_are_locked_down_and_removed_on_close():
    require_docker()
    import docker

    client = docker.from_env()
    before = set(running_sandbox_containers(os.getpid()))
    with make_sandbox("docker", workers=2, timeout_s=5.0, memory_mb=256) as sandbox:
        assert sandbox.run([ORDINARY])[0].passed
        ours = [
            client.containers.get(identifier) for identifier in set(running_sandbox_containers(os.getpid())) - before
        ]
        assert len(ours) == 2
        for container in ours:
            host = container.attrs["HostConfig"]
            assert host["NetworkMode"] == "none"
            assert host["ReadonlyRootfs"] is True
            assert host["CapDrop"] == ["ALL"]
            assert host["SecurityOpt"] == ["no-new-privileges"]
            assert host["IpcMode"] == "none"
            assert host["PidsLimit"] == 64
            assert host["Memory"] == (256 + 512) * 1024 * 1024
            assert host["CgroupParent"] == (cgroup_parent_for(client.info()["CgroupDriver"]) or "")
            uid = container.attrs["Config"]["User"].split(":")[0]
            assert int(uid) >= 300_000
    assert wait_until(lambda: not (set(running_sandbox_containers(os.getpid())) - before))


def wait_until(condition, timeout_s: float = 20.0) -> bool:
    give_up = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > give_up:
            return False
        time.sleep(0.1)
    return True


HOLDER = """
import sys, time
from mucode.sandbox import make_sandbox
sandbox = make_sandbox(sys.argv[1], workers=2, timeout_s=5.0, memory_mb=256)
print("ready", flush=True)
time.sleep(120)
"""


def start_holder(backend: str) -> subprocess.Popen:
    """A separate host process that holds a sandbox open (so the test can kill it hard)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, backend], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "ready"
    return holder


def descendants_of(pid: int) -> set:
    found, pending = set(), [pid]
    while pending:
        parent = pending.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = {int(child) for child in (task / "children").read_text().split()}
            except FileNotFoundError:
                continue
            pending.extend(children - found)
            found |= children
    return found


def test_local_workers_die_with_a_host_process_killed_hard():
    holder = start_holder("local")
    workers = descendants_of(holder.pid)
    assert len(workers) >= 2  # the started processes (and their namespaces' workers)
    holder.kill()
    holder.wait()
    assert wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers))


@pytest.mark.docker
def test_docker_workers_go_away_with_a_host_process_killed_hard():
    require_docker()
    holder = start_holder("docker")
    assert len(running_sandbox_containers(holder.pid)) == 2
    holder.kill()
    holder.wait()
    assert wait_until(lambda: not running_sandbox_containers(holder.pid))


def test_without_namespaces_the_worker_falls_back_and_still_judges():
    # An unprivileged worker cannot unshare: it must say so and still judge correctly.
    command = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        *worker_command(choose_interpreter(), str(WORKER_PARENT), "local"),
    ]
    client = WorkerClient(PipeConnection(command), "unprivileged local worker")
    try:
        assert client.features == dict.fromkeys(client.features, False) and len(client.features) == 5
        assert client.run(ORDINARY, 2.0, 256).status == "passed"
        assert client.run(Program("loop", "while True:\n    pass\n", ""), 1.0, 256).status == "timeout"
        probe = Program(
            "cwd",
            "import os\ncwd = os.getcwd()\nopen('f.txt', 'w').write('x')\n",
            "assert cwd.startswith('/tmp/mucode-sandbox-')\n",
        )
        verdict = client.run(probe, 2.0, 256)
        assert verdict.status == "passed", verdict
        leftover = Program("leftover", "import os\nleft = os.listdir('.')\n", "assert left == [], left\n")
        assert client.run(leftover, 2.0, 256).status == "passed"
    finally:
        client.close()


@pytest.mark.docker
def test_build_image_makes_a_working_sandbox_image(monkeypatch):
    require_docker()
    import docker

    client = docker.from_env()
    base = "mucode-base:bookworm"  # what containers/setup-docker.sh builds (no registry needed)
    try:
        client.images.get(base)
    except docker.errors.ImageNotFound:
        pytest.fail(f"no {base} image: run bash containers/setup-docker.sh")
    tag = f"mucode-sandbox:build-test-{os.getpid()}"
    image_id = build_image(base, tag)
    try:
        assert client.images.get(tag).id == image_id
        monkeypatch.setenv("MUCODE_SANDBOX_IMAGE", tag)
        with make_sandbox("docker", workers=1, timeout_s=5.0, memory_mb=256) as sandbox:
            assert sandbox.run([ORDINARY])[0].passed
    finally:
        client.images.remove(tag)
