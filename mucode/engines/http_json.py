"""JSON over HTTP to a model server, with per-request timeouts and retries with backoff.

``request_json`` sends one GET or POST and returns the decoded JSON body. Connection errors
(refused, reset, closed mid-answer), timeouts and 5xx answers are retried with exponential
backoff; a 4xx answer is the caller's mistake and fails at once. Before each retry the
caller's ``check_alive`` runs, so a server process that died fails the request at once
instead of after the whole backoff. Every failure is one ``ServerError`` line.

Stdlib only (``urllib``). Knows nothing about models, prompts or the OpenAI schema.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mucode.engines.errors import ServerError


@dataclass(frozen=True)
class RetryPolicy:
    """How long one request may take and how often a failed one is sent again."""

    timeout_s: float = 600.0  # one request; a long generation on a busy GPU fits
    attempts: int = 5  # tries in all, the first included
    backoff_s: float = 0.5  # wait before the 2nd try; doubles each time
    max_backoff_s: float = 8.0

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.attempts < 1 or self.backoff_s < 0:
            raise ValueError(f"bad retry policy {self}: timeout_s > 0, attempts >= 1, backoff_s >= 0")

    def wait_before(self, attempt: int) -> float:
        """Seconds to sleep before try number ``attempt`` (2, 3, ...)."""
        return min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 2))


class RetryableError(Exception):
    """A failure worth trying again: the server may come back or catch up."""


def send_once(url: str, payload: dict[str, Any] | None, timeout_s: float) -> bytes:
    """One request (POST of JSON when there is a payload, else GET); the body of a 2xx answer."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.read()
    except urllib.error.HTTPError as error:
        body = error.read().decode(errors="replace").strip().replace("\n", " ")[:300]
        if error.code >= 500:
            raise RetryableError(f"HTTP {error.code}: {body}") from error
        raise ServerError(f"{url} answered HTTP {error.code}: {body}") from error
    except TimeoutError as error:
        raise RetryableError(f"no answer within {timeout_s:g} s") from error
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError) as error:
        reason = getattr(error, "reason", error)
        raise RetryableError(f"{type(reason).__name__}: {reason}") from error


def request_json(
    url: str,
    payload: dict[str, Any] | None,
    policy: RetryPolicy,
    check_alive: Callable[[], None] = lambda: None,
) -> Any:
    """The JSON answer to ``url``, retrying connection errors, timeouts and 5xx per ``policy``."""
    last = ""
    for attempt in range(1, policy.attempts + 1):
        if attempt > 1:
            time.sleep(policy.wait_before(attempt))
        check_alive()
        try:
            return json.loads(send_once(url, payload, policy.timeout_s))
        except json.JSONDecodeError as error:
            last = f"an answer that is not JSON ({error})"
        except RetryableError as error:
            last = str(error)
    check_alive()
    raise ServerError(f"{url} failed {policy.attempts} times, last: {last}")
