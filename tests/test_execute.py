import polars as pl
import pytest

from mucode.data import stdio_harness
from mucode.sandbox import make_sandbox
from mucode.tasks.execute import ExecuteInputError, label_rollouts, oracle_programs, sandbox_program

PROBLEMS = pl.DataFrame({
    "task_id": ["t/add"], "dataset": ["mbpp"],
    "public_tests": ["assert add(1, 2) == 3"],
    "private_tests": ["assert add(1, 2) == 3\nassert add(-1, 1) == 0"],
})
RIGHT = "def add(a, b):\n    return a + b"
PUBLIC_ONLY = "def add(a, b):\n    return 3"


def rollouts(codes, private_passed):
    return pl.DataFrame({"task_id": ["t/add"] * len(codes), "rollout_id": list(range(len(codes))),
                         "turn": [1] * len(codes), "code": codes, "private_passed": private_passed})


@pytest.fixture(scope="module")
def sandbox():
    with make_sandbox("local", workers=2, timeout_s=5.0) as box:
        yield box


def test_labels_come_from_the_oracle_and_mismatches_are_flagged(sandbox):
    # The second row claims a pass in the rollout loop that the oracle does not confirm.
    frame = label_rollouts(rollouts([RIGHT, PUBLIC_ONLY, RIGHT], [True, True, True]), PROBLEMS, sandbox.run)
    assert frame["oracle_passed"].to_list() == [True, False, True]
    assert frame["label_mismatch"].to_list() == [False, True, False]
    assert frame["oracle_status"].to_list() == ["passed", "failed", "passed"]
    assert (frame["exec_wall_s"] > 0).all()


def test_identical_code_is_executed_once():
    programs, row_program = oracle_programs(rollouts([RIGHT, PUBLIC_ONLY, RIGHT], [True, False, True]), PROBLEMS)
    assert len(programs) == 2 and row_program == [0, 1, 0]


def test_unknown_task_is_a_one_line_error():
    with pytest.raises(ExecuteInputError, match="not in the problems"):
        oracle_programs(rollouts([RIGHT], [True]).with_columns(pl.lit("t/other").alias("task_id")), PROBLEMS)


def test_stdin_stdout_problems_run_inside_the_harness(sandbox):
    tests = stdio_harness.stdio_tests_source([("2 3\n", "5\n")])
    right = sandbox_program("a", "codecontests", "a, b = map(int, input().split())\nprint(a + b)", tests)
    wrong = sandbox_program("b", "codecontests", "print(0)", tests)
    assert right.tests == "" and "PROGRAM_SOURCE" in right.code
    passed, failed = sandbox.run([right, wrong])
    assert passed.passed and not failed.passed
    assert "expected output is '5\\n' but the program printed '0\\n'" in failed.feedback


@pytest.mark.slow
def test_execute_on_a_dask_cluster_matches_in_process(sandbox):
    from distributed import LocalCluster

    from mucode.config import load_config
    from mucode.tasks.execute import run_on_cluster

    frame = rollouts([RIGHT, PUBLIC_ONLY, RIGHT], [True, False, True])
    with LocalCluster(n_workers=1, processes=True, threads_per_worker=1, dashboard_address=None) as cluster:
        cfg = load_config("configs/smoke.yaml", {"compute.dask_address": cluster.scheduler_address,
                                                 "sandbox.backend": "local"})
        on_cluster = label_rollouts(frame, PROBLEMS, lambda programs: run_on_cluster(cfg, programs))
    assert on_cluster.drop("exec_wall_s").equals(label_rollouts(frame, PROBLEMS, sandbox.run).drop("exec_wall_s"))
