import polars as pl
import pytest

from mucode.data import stdio_harness
from mucode.sandbox import make_sandbox
from mucode.data.programs import sandbox_program
from mucode.tasks.execute import ExecuteInputError, label_rollouts, oracle_programs

PROBLEMS = pl.DataFrame({
    "task_id": ["t/add"], "dataset": ["mbpp"], "prompt": ["Write add(a, b)."],
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
    frame, walls = label_rollouts(rollouts([RIGHT, PUBLIC_ONLY, RIGHT], [True, True, True]), PROBLEMS, sandbox.run)
    assert frame["oracle_passed"].to_list() == [True, False, True]
    assert frame["label_mismatch"].to_list() == [False, True, False]
    assert frame["oracle_status"].to_list() == ["passed", "failed", "passed"]
    assert len(walls) == 2 and all(wall > 0 for wall in walls)  # two distinct programs, each timed


def test_labelling_again_gives_the_same_rows_so_later_stages_stay_cached(sandbox):
    # Timings stay out of the rows: a recomputed execute artifact keeps its content hash.
    frame = rollouts([RIGHT, PUBLIC_ONLY], [True, False])
    first, first_walls = label_rollouts(frame, PROBLEMS, sandbox.run)
    second, second_walls = label_rollouts(frame, PROBLEMS, sandbox.run)
    assert first.equals(second) and first_walls != second_walls


def test_an_execute_stage_computed_twice_stores_one_artifact_with_its_timings_in_the_manifest(tmp_path):
    from mucode.artifacts import ArtifactStore
    from mucode.config import load_config
    from mucode.tasks.execute import execute_stage

    cfg = load_config("configs/smoke.yaml", {"sandbox.backend": "local"})
    store = ArtifactStore(str(tmp_path))
    rows = store.put_frame(rollouts([RIGHT, PUBLIC_ONLY], [True, False]), stage="rollout")
    problems = store.put_frame(PROBLEMS, stage="problems")
    first = execute_stage(cfg, str(tmp_path), rows, problems)
    second = execute_stage(cfg, str(tmp_path), rows, problems)
    assert first.hash == second.hash  # what the aggregate's cache key reads
    metrics = store.manifest(second)["metrics"]
    assert metrics["programs"] == 2 and metrics["program_wall_s"] > 0


def test_identical_code_is_executed_once():
    programs, row_program = oracle_programs(rollouts([RIGHT, PUBLIC_ONLY, RIGHT], [True, False, True]), PROBLEMS)
    assert len(programs) == 2 and row_program == [0, 1, 0]


def test_unknown_task_is_a_one_line_error():
    with pytest.raises(ExecuteInputError, match="not in the problems"):
        oracle_programs(rollouts([RIGHT], [True]).with_columns(pl.lit("t/other").alias("task_id")), PROBLEMS)


def test_stdin_stdout_problems_run_inside_the_harness(sandbox):
    tests = stdio_harness.stdio_tests_source([("2 3\n", "5\n")])
    problem = {"dataset": "codecontests", "prompt": "Print the sum of two integers."}
    right = sandbox_program("a", problem, "a, b = map(int, input().split())\nprint(a + b)", tests)
    wrong = sandbox_program("b", problem, "print(0)", tests)
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
        on_cluster, _ = label_rollouts(frame, PROBLEMS, lambda programs: run_on_cluster(cfg, programs))
    assert on_cluster.equals(label_rollouts(frame, PROBLEMS, sandbox.run)[0])


# HumanEval targets that call a helper only their prompt defines.
PROMPT_HELPER_TASKS = ("humaneval/10", "humaneval/32", "humaneval/38", "humaneval/50")


def chat_answer(problem: dict) -> str:
    """The canonical solution as a chat model writes it: only the target function, fenced."""
    signature = next(line for line in problem["prompt"].splitlines()
                     if line.startswith(f"def {problem['entry_point']}("))
    body = problem["solution"][len(problem["prompt"]):]
    return f"Here is the function:\n```python\n{signature}\n{body}```\n"


@pytest.fixture(scope="module")
def helper_problems() -> pl.DataFrame:
    from mucode.data import load_problems

    problems = load_problems("humaneval", "test")
    return problems.filter(pl.col("task_id").is_in(PROMPT_HELPER_TASKS))


def test_humaneval_answers_that_rewrite_only_the_target_can_call_the_prompts_helpers(sandbox, helper_problems):
    from mucode.data.verify import failing_solutions
    from mucode.prompts import extract_code
    from mucode.search import execute_candidates

    assert helper_problems.height == 4
    rows = list(helper_problems.iter_rows(named=True))
    codes = [extract_code(chat_answer(row)) for row in rows]
    assert all(code.startswith("def ") and "encode_cyclic(s: str)" not in code for code in codes)
    # The evaluation search: public and private tests of every candidate.
    verdicts = execute_candidates(sandbox, list(zip(rows, codes)))
    assert [(public.status, private.status) for public, private in verdicts] == [("passed", "passed")] * 4, \
        [private.feedback for _, private in verdicts]
    # The execute stage: oracle labels of rollout rows.
    frame = pl.DataFrame({"task_id": [row["task_id"] for row in rows], "rollout_id": [0] * 4, "turn": [1] * 4,
                          "code": codes, "private_passed": [True] * 4})
    assert label_rollouts(frame, helper_problems, sandbox.run)[0]["oracle_passed"].to_list() == [True] * 4
    # The dataset check runs the same program text.
    assert failing_solutions(helper_problems.with_columns(pl.Series("solution", codes))) == []


def test_an_answer_that_redefines_a_prompt_helper_runs_its_own(sandbox, helper_problems):
    from mucode.search import execute_candidates

    row = helper_problems.filter(pl.col("task_id") == "humaneval/10").row(0, named=True)
    code = chat_answer(row).split("```python\n")[1].split("```")[0]
    broken_helper = "def is_palindrome(string: str) -> bool:\n    return True\n\n" + code
    (_, private), = execute_candidates(sandbox, [(row, broken_helper)])
    assert private.status == "failed", private  # the answer's helper replaced the prompt's
