"""Unit tests of the sandbox worker's pure parts: framing, verdict decisions, feedback,
bounded capture, job limits, mount parsing. No process is forked here."""

import json
import os
import shutil
import signal
import tempfile

import pytest

from mucode.sandbox.worker import feedback, protocol
from mucode.sandbox.worker.capture import BoundedCapture
from mucode.sandbox.worker.isolation import hidden_from_others, writable_mounts
from mucode.sandbox.worker.limits import JobError, Limits, limits_from_job
from mucode.sandbox.worker.verdict import Observation, TamperedVerdict, decide, parse_verdict
from mucode.sandbox.worker.version import worker_source_hash

NONCE = "ab" * 16
LIMITS = Limits(timeout_s=2.0, memory_mb=256)


def exited(code: int) -> int:
    return code << 8


def killed_by(number: int) -> int:
    return number


def message(status: str, pid: int = 42, nonce: str = NONCE, feedback_text: str = "") -> bytes:
    return (json.dumps({"nonce": nonce, "pid": pid, "status": status, "feedback": feedback_text}) + "\n").encode()


def observe(
    verdict: bytes = b"", wait_status: int = 0, output: str = "", cpu_s: float = 0.0, timed_out: bool = False
) -> Observation:
    return Observation(
        verdict=verdict,
        verdict_overflow=False,
        output=output,
        wait_status=wait_status,
        cpu_s=cpu_s,
        timed_out=timed_out,
    )


# ---- framing -------------------------------------------------------------------------


def reader_over(data: bytes):
    position = 0

    def read_exact(size: int) -> bytes:
        nonlocal position
        chunk = data[position : position + size]
        position += len(chunk)
        return chunk

    return read_exact


def test_frames_round_trip_any_text_including_lone_surrogates():
    original = {"code": "print('é\udc80')\n", "n": 3}
    read = reader_over(protocol.encode_frame(original) + protocol.encode_frame({"x": 1}))
    assert protocol.read_frame(read) == original
    assert protocol.read_frame(read) == {"x": 1}
    assert protocol.read_frame(read) is None


def test_truncated_frame_is_a_protocol_error_not_a_clean_end():
    frame = protocol.encode_frame({"code": "x" * 100})
    with pytest.raises(protocol.ProtocolError, match="frame body"):
        protocol.read_frame(reader_over(frame[:-5]))
    with pytest.raises(protocol.ProtocolError, match="header"):
        protocol.read_frame(reader_over(frame[:2]))


def test_frame_body_must_be_a_json_object():
    with pytest.raises(protocol.ProtocolError, match="JSON list"):
        protocol.read_frame(reader_over(b"\x00\x00\x00\x02[]"))


def test_oversized_announced_frame_is_refused_before_reading_it():
    header = (protocol.MAX_FRAME_BYTES + 1).to_bytes(4, "big")
    with pytest.raises(protocol.ProtocolError, match="exceeds"):
        protocol.read_frame(reader_over(header))


# ---- verdict channel -----------------------------------------------------------------


def test_only_the_childs_own_message_with_the_nonce_counts():
    assert parse_verdict(message("passed"), NONCE, child_pid=42) == ("passed", "")
    assert parse_verdict(b"", NONCE, child_pid=42) is None


def test_messages_of_forked_copies_are_ignored_but_not_taken_for_the_child():
    copies_only = message("passed", pid=43) + message("passed", pid=44)
    assert parse_verdict(copies_only, NONCE, child_pid=42) is None
    mixed = message("passed", pid=43) + message("failed", pid=42, feedback_text="tb")
    assert parse_verdict(mixed, NONCE, child_pid=42) == ("failed", "tb")


@pytest.mark.parametrize(
    "channel",
    [
        message("passed", nonce="cd" * 16),  # a guessed nonce
        b'{"status": "passed"}\n',  # printed-looking success
        message("passed") + message("passed"),  # reported twice
        message("passed")[:-1],  # no newline: an incomplete message
        b"passed\n",
        message("timeout"),  # only the worker may decide a timeout
        message("bogus"),
    ],
)
def test_anything_else_on_the_channel_is_tampering(channel):
    with pytest.raises(TamperedVerdict):
        parse_verdict(channel, NONCE, child_pid=42)


def test_a_pass_needs_the_message_and_a_clean_exit():
    assert decide(observe(message("passed"), exited(0)), NONCE, 42, LIMITS) == ("passed", "")
    status, text = decide(observe(message("passed"), exited(3)), NONCE, 42, LIMITS)
    assert status == "error" and "exit code 3" in text
    status, text = decide(observe(message("passed"), killed_by(signal.SIGKILL)), NONCE, 42, LIMITS)
    assert status == "error" and "SIGKILL" in text


def test_early_exit_without_message_is_an_error_with_the_output_tail():
    status, text = decide(observe(b"", exited(0), output="All tests passed!\n"), NONCE, 42, LIMITS)
    assert status == "error"
    assert "before its tests finished" in text and "All tests passed!" in text


def test_tampered_channel_is_an_error_even_with_a_valid_message_too():
    channel = b"junk\n" + message("passed")
    status, _ = decide(observe(channel, exited(0)), NONCE, 42, LIMITS)
    assert status == "error"


def test_timeouts_come_from_the_deadline_or_the_cpu_limit():
    assert decide(observe(timed_out=True), NONCE, 42, LIMITS)[0] == "timeout"
    assert decide(observe(wait_status=killed_by(signal.SIGXCPU)), NONCE, 42, LIMITS)[0] == "timeout"
    hard_cpu_kill = observe(wait_status=killed_by(signal.SIGKILL), cpu_s=LIMITS.cpu_seconds + 0.5)
    assert decide(hard_cpu_kill, NONCE, 42, LIMITS)[0] == "timeout"
    assert decide(observe(wait_status=killed_by(signal.SIGKILL), cpu_s=0.1), NONCE, 42, LIMITS)[0] == "error"


def test_interpreter_abort_on_memory_is_a_memory_verdict():
    crash = observe(wait_status=killed_by(signal.SIGABRT), output="Fatal Python error: ... MemoryError")
    assert decide(crash, NONCE, 42, LIMITS) == ("memory", feedback.memory_message(256))


# ---- feedback -------------------------------------------------------------------------


def raise_from_program_frames() -> BaseException:
    solution = compile("def f(x):\n    return 1 / x\n", feedback.SOLUTION_FILE, "exec")
    tests = compile("assert f(0) == 1\n", feedback.TESTS_FILE, "exec")
    namespace: dict = {}
    exec(solution, namespace)
    try:
        exec(tests, namespace)
    except ZeroDivisionError as exc:
        return exc
    raise AssertionError("the program should have raised")


def test_tracebacks_keep_only_program_frames():
    text = feedback.format_exception(raise_from_program_frames(), "/tmp")
    assert text.startswith("Traceback (most recent call last):")
    assert 'File "tests.py", line 1' in text and 'File "solution.py", line 2, in f' in text
    assert "test_sandbox_worker.py" not in text and __file__ not in text
    assert text.rstrip().endswith("ZeroDivisionError: division by zero")


def test_fallback_work_root_is_shown_as_tmp():
    text = "FileNotFoundError: '/tmp/mucode-sandbox-a1b2/data.txt'"
    assert feedback.neutralize_paths(text, "/tmp/mucode-sandbox-a1b2") == "FileNotFoundError: '/tmp/data.txt'"


@pytest.mark.parametrize("limit", [50, 200, 2048])
def test_trim_respects_the_bound_and_keeps_head_and_tail(limit):
    text = "HEAD" + "x" * 10_000 + "TAIL: the error"
    trimmed = feedback.trim(text, limit)
    assert len(trimmed) <= limit
    assert trimmed.endswith("the error")
    assert feedback.trim("short", limit) == "short"


def test_bounded_capture_keeps_head_and_tail_and_counts_the_rest():
    capture = BoundedCapture(limit_bytes=20)
    for _ in range(1000):
        capture.add(b"0123456789")
    capture.add(b"THE END!!")
    text = capture.text()
    assert text.startswith("0123456789")
    assert text.endswith("THE END!!")
    assert capture.dropped_bytes == 1000 * 10 + 9 - 20
    assert f"{capture.dropped_bytes} bytes of output dropped" in text


# ---- job limits, mounts, version ---------------------------------------------------------


def test_job_limits_are_validated_with_a_clear_message():
    assert limits_from_job({"timeout_s": 1.5, "memory_mb": 128}) == Limits(timeout_s=1.5, memory_mb=128)
    assert Limits(timeout_s=1.2, memory_mb=64).cpu_seconds == 2
    with pytest.raises(JobError, match="timeout_s"):
        limits_from_job({"timeout_s": -1, "memory_mb": 128})
    with pytest.raises(JobError, match="memory_mb"):
        limits_from_job({"timeout_s": 1, "memory_mb": 8})
    with pytest.raises(JobError, match="memory_mb"):
        limits_from_job({"timeout_s": 1, "memory_mb": True})


def test_writable_mounts_skip_read_only_ones_and_keep_their_hardening_flags():
    mountinfo = (
        "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
        "23 22 0:5 / /dev/shm rw,nosuid,nodev shared:2 - tmpfs tmpfs rw\n"
        "24 22 0:6 / /mnt/read\\040only ro,nosuid,nodev,relatime - tmpfs tmpfs ro\n"
        "25 22 0:7 / /mnt/with\\040space rw,noexec - tmpfs tmpfs rw\n"
    )
    from mucode.sandbox.worker import libc

    assert list(writable_mounts(mountinfo)) == [
        ("/", 0),
        ("/dev/shm", libc.MS_NOSUID | libc.MS_NODEV),
        ("/mnt/with space", libc.MS_NOEXEC),
    ]


def test_private_directories_are_detected():
    root = tempfile.mkdtemp(dir="/tmp")  # pytest's tmp_path sits below a private directory
    try:
        os.chmod(root, 0o755)
        private_lib = os.path.join(root, "private", "lib")
        public = os.path.join(root, "public")
        os.makedirs(private_lib, mode=0o755)
        os.makedirs(public, mode=0o755)
        os.chmod(os.path.dirname(private_lib), 0o700)
        assert hidden_from_others((private_lib, public, os.path.join(root, "absent.zip"))) == (private_lib,)
    finally:
        shutil.rmtree(root)


def test_worker_hash_changes_with_any_worker_source(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    before = worker_source_hash(str(tmp_path))
    (tmp_path / "notes.txt").write_text("ignored")
    assert worker_source_hash(str(tmp_path)) == before
    (tmp_path / "a.py").write_text("x = 2\n")
    assert worker_source_hash(str(tmp_path)) != before


def test_directories_holding_the_interpreter_stay_visible(tmp_path):
    from mucode.sandbox.worker.isolation import directories_to_hide

    interpreter_home, data = tmp_path / "opt", tmp_path / "data"
    (interpreter_home / "lib").mkdir(parents=True)
    data.mkdir()
    candidates = (str(interpreter_home), str(data), str(tmp_path / "absent"))
    assert directories_to_hide(candidates, keep_visible=(str(interpreter_home / "lib"),)) == (str(data),)
    assert directories_to_hide(candidates, keep_visible=(str(tmp_path / "optional"),)) == candidates[:2]
    nested = (str(data), str(data / "inner"), str(data))
    (data / "inner").mkdir()
    assert directories_to_hide(nested, keep_visible=()) == (str(data),)


def test_the_system_itself_is_never_hidden():
    from mucode.sandbox.worker.isolation import directories_to_hide

    assert directories_to_hide(("/", "/usr", "/var", "/etc"), keep_visible=()) == ()
