"""Turn what the worker observed of one child into a (status, feedback) pair.

Trust model of the verdict channel (the reason a pass cannot be faked by ordinary means):
  * `passed` comes from exactly one message on a dedicated verdict pipe, never from the
    exit code, stdout or stderr. The worker creates the pipe per program; the child holds
    the only write end (fd 3, close-on-exec, so programs the child execs never get it).
  * The message must carry a 128-bit nonce drawn by the worker for this run only (anything
    without it, printed, guessed or replayed, makes the run an `error`) and the pid of the
    child itself (read through os.getpid bound before any program ran): a forked copy of
    the child that runs on into the harness reports too, but only the child's own
    message counts, since only it ran code and tests as one process.
  * After the message the child must exit with status 0 through the harness; any other
    message, a second message, or a non-clean exit makes the run an `error`.
  * The worker only reads the pipe; nothing the program writes reaches the host except
    through the worker, which re-frames it. The worker is out of the program's reach in
    both backends: it is PID 1 of the program's PID namespace (the kernel drops every
    signal a program sends it) and non-dumpable (its /proc/1/fd and /proc/1/mem are
    closed to the program, and ptrace is refused); locally it also runs as root while
    programs run as their own unprivileged uid.
  * Exits of every kind (sys.exit, SystemExit, os._exit, signals, killing the parent,
    printing "passed") leave no valid message, so they are `error`.
Residual risk, stated plainly: code and tests share one process by design, so a program
that deliberately introspects the harness's own frames or memory (sys._getframe, gc,
ctypes) could find the nonce and fd and forge a message. No in-process harness can rule
that out; it takes targeted introspection of this harness, not an accident or a generic
reward hack, and the tests and nonce exist only as harness locals (never in globals,
builtins, sys.modules, the environment or any file).
"""

import json
import os
import signal
from dataclasses import dataclass

from .feedback import early_exit_message, memory_message, timeout_message, trim
from .limits import Limits

STATUSES = ("passed", "failed", "error", "timeout", "memory")
CONFINE_FAILED_EXIT = 121  # the child exits with this if it could not lock itself down
REPORT_FAILED_EXIT = 122  # ... or if the program left it unable to write its verdict


class TamperedVerdict(Exception):
    """The verdict pipe held something other than one valid message from the child."""


@dataclass(frozen=True)
class Observation:
    verdict: bytes  # everything read from the verdict pipe
    verdict_overflow: bool  # more than Limits.max_verdict_bytes arrived
    output: str  # bounded stdout+stderr
    wait_status: int  # from os.wait4
    cpu_s: float  # user+system CPU of the child
    timed_out: bool  # the worker's wall-clock deadline passed


def parse_verdict(data: bytes, nonce: str, child_pid: int) -> tuple[str, str] | None:
    """The (status, feedback) the child itself reported; None if it reported nothing.

    Messages from forked copies of the child (right nonce, other pid) are ignored: they
    ran the harness too, but not as the process that ran the tests for this verdict.
    """
    if not data:
        return None
    if not data.endswith(b"\n"):
        raise TamperedVerdict("the channel does not end with a complete message")
    own = []
    for line in data[:-1].split(b"\n"):
        try:
            message = json.loads(line.decode("ascii"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise TamperedVerdict(f"a message is not JSON: {exc}") from None
        if not isinstance(message, dict) or message.get("nonce") != nonce:
            raise TamperedVerdict("a message lacks this run's nonce")
        if message.get("pid") == child_pid:
            own.append(message)
    if not own:
        return None
    if len(own) > 1:
        raise TamperedVerdict("the child reported more than once")
    status, feedback = own[0].get("status"), own[0].get("feedback")
    if status not in STATUSES or status == "timeout" or not isinstance(feedback, str):
        raise TamperedVerdict(f"the message has an invalid status {status!r}")
    return status, feedback


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _with_output(message: str, output: str, limits: Limits) -> str:
    if not output.strip():
        return message
    return trim(f"{message}\nOutput:\n{output}", limits.max_feedback_chars)


def _ran_out_of_cpu(observation: Observation, limits: Limits) -> bool:
    if not os.WIFSIGNALED(observation.wait_status):
        return False
    number = os.WTERMSIG(observation.wait_status)
    return number == signal.SIGXCPU or (number == signal.SIGKILL and observation.cpu_s >= limits.cpu_seconds)


def decide(observation: Observation, nonce: str, child_pid: int, limits: Limits) -> tuple[str, str]:
    if observation.timed_out or _ran_out_of_cpu(observation, limits):
        return "timeout", timeout_message(limits.timeout_s)
    try:
        if observation.verdict_overflow:
            raise TamperedVerdict("more data than any verdict message")
        verdict = parse_verdict(observation.verdict, nonce, child_pid)
    except TamperedVerdict:
        return "error", early_exit_message("it wrote to the sandbox's verdict channel")
    clean_exit = os.WIFEXITED(observation.wait_status) and os.WEXITSTATUS(observation.wait_status) == 0
    if verdict is not None and clean_exit:
        return verdict
    if os.WIFSIGNALED(observation.wait_status):
        how = f"killed by {_signal_name(os.WTERMSIG(observation.wait_status))}"
    else:
        code = os.WEXITSTATUS(observation.wait_status)
        how = {
            CONFINE_FAILED_EXIT: "the sandbox could not confine it",
            REPORT_FAILED_EXIT: "its verdict could not be delivered: did it close file descriptors?",
        }.get(code, f"exit code {code}")
    if verdict is None and os.WIFSIGNALED(observation.wait_status) and "MemoryError" in observation.output:
        # CPython aborts with "Fatal Python error: ... MemoryError" when it cannot even raise one.
        return "memory", memory_message(limits.memory_mb)
    return "error", _with_output(early_exit_message(how), observation.output, limits)
