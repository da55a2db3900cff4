"""The multi-turn code environment: conversation state and when a trajectory stops.

A trajectory is the chat so far: the first user message, then alternating assistant answers
and `Feedback:` user messages. Training rollouts stop once a turn passes the public and the
private tests, or at T turns; evaluation searches always run all T turns (their metrics
look at every turn). Pure data and functions: executing code is the sandbox's job,
generating answers the engine's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mucode.prompts import extract_code, feedback_message, first_user_message

Message = dict[str, str]
Mode = Literal["train", "eval"]


def initial_conversation(problem: str, public_tests: str, dataset: str) -> list[Message]:
    return [{"role": "user", "content": first_user_message(problem, public_tests, dataset)}]


def extend_conversation(conversation: list[Message], answer: str, public_passed: bool,
                        error_text: str) -> list[Message]:
    """The conversation after one turn: the answer, then the environment's feedback."""
    return [
        *conversation,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": feedback_message(public_passed, error_text)},
    ]


def is_finished(mode: Mode, turn: int, max_turns: int, public_passed: bool, private_passed: bool) -> bool:
    """Whether a trajectory stops after `turn` (1-based)."""
    if turn >= max_turns:
        return True
    return mode == "train" and public_passed and private_passed


@dataclass
class Trajectory:
    """One rollout of one problem: its conversation and per-turn results."""

    task_id: str
    rollout_id: int
    conversation: list[Message]
    answers: list[str] = field(default_factory=list)
    finished: bool = False

    @property
    def turn(self) -> int:
        return len(self.answers)

    @property
    def code(self) -> str:
        return extract_code(self.answers[-1]) if self.answers else ""
