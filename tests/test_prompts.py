from mucode.environment import Trajectory, extend_conversation, initial_conversation, is_finished
from mucode.prompts import (
    FEEDBACK_PREFIX,
    MAX_FEEDBACK_CHARS,
    SUCCESS_FEEDBACK,
    extract_code,
    feedback_message,
    first_user_message,
)


def test_first_message_has_problem_tests_and_the_papers_wording():
    message = first_user_message("Write a function add.", "assert add(1, 2) == 3", "mbpp")
    assert message.startswith("Write a Python function implementation for the following prompt:\n\nWrite a function add.")
    assert "Your code should satisfy these tests:\n\nassert add(1, 2) == 3\n\n" in message
    assert message.endswith("Be sure to include the relevant import statements:\n```python\ncode\n```")


def test_extract_first_python_block():
    answer = "Sure:\n```python\ndef f():\n    return 1\n```\nand\n```python\nprint(2)\n```"
    assert extract_code(answer) == "def f():\n    return 1"


def test_extract_unterminated_block_and_other_fences():
    assert extract_code("```python\ndef f(): pass") == "def f(): pass"
    assert extract_code("```\nx = 1\n```") == "x = 1"
    assert extract_code("```py\nx = 2\n```") == "x = 2"


def test_extract_without_fence_returns_whole_answer():
    assert extract_code("  def f(): return 3\n") == "def f(): return 3"


def test_python_block_preferred_over_earlier_plain_block():
    assert extract_code("```text\noutput\n```\n```python\ny = 1\n```") == "y = 1"


def test_feedback_messages():
    assert feedback_message(True, "") == FEEDBACK_PREFIX + SUCCESS_FEEDBACK
    failed = feedback_message(False, "Traceback ...\nAssertionError")
    assert failed == "Feedback: Traceback ...\nAssertionError"
    long = feedback_message(False, "x" * 10_000 + "NameError: y")
    assert long.endswith("NameError: y") and len(long) <= len(FEEDBACK_PREFIX) + MAX_FEEDBACK_CHARS + 5


def test_conversation_grows_by_answer_and_feedback():
    start = initial_conversation("P", "assert f() == 1", "mbpp")
    after = extend_conversation(start, "```python\ndef f(): return 2\n```", False, "AssertionError")
    assert [m["role"] for m in after] == ["user", "assistant", "user"]
    assert after[2]["content"] == "Feedback: AssertionError"
    assert start == initial_conversation("P", "assert f() == 1", "mbpp")  # not mutated


def test_termination_rules():
    # Training stops when public and private tests pass; evaluation runs all turns.
    assert is_finished("train", 1, 3, True, True)
    assert not is_finished("train", 1, 3, True, False)
    assert not is_finished("eval", 1, 3, True, True)
    assert is_finished("eval", 3, 3, False, False)


def test_trajectory_code_is_last_answers_code():
    trajectory = Trajectory("t", 0, [])
    assert trajectory.code == "" and trajectory.turn == 0
    trajectory.answers.append("```python\nx = 1\n```")
    assert trajectory.code == "x = 1" and trajectory.turn == 1
