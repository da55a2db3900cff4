"""Unfinished stage attempts (`mucode.attempts`): an attempt that raised or was killed is
counted, to its last heartbeat, by the next attempt of the same stage run that finishes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from mucode.attempts import ATTEMPTS_DIR, stage_attempt

CHILD = """
import sys, time
from mucode import attempts
attempts.HEARTBEAT_S = 0.1
with attempts.stage_attempt(sys.argv[1], sys.argv[2]):
    print("started", flush=True)
    time.sleep(600)
"""


def test_an_attempt_that_raised_is_counted_once_by_the_next_that_finishes(tmp_path):
    root = str(tmp_path)
    with pytest.raises(RuntimeError, match="out of memory"):
        with stage_attempt(root, "finetune/finetune-mucode"):
            time.sleep(0.3)
            raise RuntimeError("out of memory")
    with stage_attempt(root, "verifier/verifier") as other_stage:
        pass
    assert other_stage.unfinished_s == 0.0  # another stage run's attempt is not its cost
    with stage_attempt(root, "finetune/finetune-mucode") as finished:
        pass
    assert 0.25 <= finished.unfinished_s < 2.0
    assert list((tmp_path / ATTEMPTS_DIR).iterdir()) == []
    with stage_attempt(root, "finetune/finetune-mucode") as again:
        pass
    assert again.unfinished_s == 0.0


def test_a_killed_attempt_counts_to_its_last_heartbeat_and_a_running_one_not_at_all(tmp_path):
    root, stage_run = str(tmp_path), "rollout/rollout-1"
    child = subprocess.Popen([sys.executable, "-c", CHILD, root, stage_run], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert child.stdout.readline().strip() == "started"
        time.sleep(1.5)
        with stage_attempt(root, stage_run) as while_running:
            pass
        assert while_running.unfinished_s == 0.0  # the child is still at work
        assert len(list((tmp_path / ATTEMPTS_DIR).glob("*.json"))) == 1
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    with stage_attempt(root, stage_run) as after_kill:
        pass
    assert 1.2 <= after_kill.unfinished_s < 3.0
    assert list((tmp_path / ATTEMPTS_DIR).glob("*.json")) == []


def test_a_torn_heartbeat_file_is_left_for_later_and_remote_roots_keep_none(tmp_path):
    folder = tmp_path / ATTEMPTS_DIR
    folder.mkdir()
    (folder / "x.json").write_text('{"stage_run": "rollout/rollout-1", "pid": 1, "sta')
    with stage_attempt(str(tmp_path), "rollout/rollout-1") as attempt:
        pass
    assert attempt.unfinished_s == 0.0 and (folder / "x.json").exists()
    with stage_attempt("s3://bucket/experiment", "rollout/rollout-1") as remote:
        assert remote is None
