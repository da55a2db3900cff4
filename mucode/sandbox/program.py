"""The values that cross the sandbox boundary: a Program in, a Verdict out.

Program fields are checked on construction, so bad input fails at once with one line
naming the field. Does not run anything.
"""

from dataclasses import dataclass
from typing import Literal

Status = Literal["passed", "failed", "error", "timeout", "memory"]
STATUSES: tuple[str, ...] = ("passed", "failed", "error", "timeout", "memory")


@dataclass(frozen=True)
class Program:
    """Python `code`, then `tests` run after it in the same namespace."""

    id: str
    code: str
    tests: str

    def __post_init__(self) -> None:
        for name in ("id", "code", "tests"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(
                    f"Program.{name} must be a str, got {type(value).__name__}: pass text (use '' for none)"
                )


@dataclass(frozen=True)
class Verdict:
    """How one program ended. `feedback` is "" for a pass, else the error text for the model."""

    id: str
    status: Status
    passed: bool
    feedback: str
    wall_s: float
