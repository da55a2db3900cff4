"""The server engine (mucode.engines.server, the sglang engine's client) against real servers.

Fast tests: SGLang's launch command (parsed only: SGLang needs a GPU), the request body,
and the retry/backoff/timeout rules against a real stdlib HTTP server in a thread.

Slow tests: a real OpenAI-compatible server process, `transformers serve` on the bundled
SmolLM2 on CPU, started, health-waited, killed mid-run, stopped (SIGSTOP) and restarted,
with batched multi-turn generation through the rollout stage's `generate_turn`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mucode.engines import SamplingParams, ServerError, make_engine
from mucode.engines.http_json import RetryPolicy, request_json
from mucode.engines.server import ServerEngine, completion_payload, parse_completion
from mucode.engines.server_process import ServerProcess, free_port, wait_until_ready
from mucode.engines.sglang import engine_kwargs, gpu_environment, launch_command

BUNDLED = "bundled:smollm2-135m-instruct"
MULTI_TURN = [
    [{"role": "user", "content": "Write a Python function add(a, b)."}],
    [
        {"role": "user", "content": "Write a function is_even(n)."},
        {"role": "assistant", "content": "```python\ndef is_even(n):\n    return n % 2\n```"},
        {"role": "user", "content": "Feedback: AssertionError: assert is_even(2) == True"},
    ],
]


# --- SGLang's launch command (parsed only) ----------------------------------------------


def sglang_flag_parser() -> argparse.ArgumentParser:
    """The subset of SGLang's ServerArgs flags the engine emits, with their types."""
    parser = argparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--tp-size", type=int)
    parser.add_argument("--dp-size", type=int)
    parser.add_argument("--base-gpu-id", type=int)
    parser.add_argument("--dtype")
    parser.add_argument("--log-level")
    parser.add_argument("--mem-fraction-static", type=float)
    parser.add_argument("--max-running-requests", type=int)
    parser.add_argument("--enable-deterministic-inference", action="store_true")
    return parser


def test_sglang_launch_command_parses_back_into_the_engine_kwargs() -> None:
    kwargs = engine_kwargs("/m", 2, 2, 0, 0.7, "bfloat16", 256, deterministic=True)
    command = launch_command(kwargs, "127.0.0.1", 30001)
    assert command[:3] == [sys.executable, "-m", "sglang.launch_server"]
    parsed = vars(sglang_flag_parser().parse_args(command[3:]))
    assert parsed.pop("host") == "127.0.0.1" and parsed.pop("port") == 30001
    assert parsed == kwargs
    plain = engine_kwargs("/m", 1, 1, 0, None, "auto", None, deterministic=False)
    parsed = vars(sglang_flag_parser().parse_args(launch_command(plain, "127.0.0.1", 1)[3:]))
    assert parsed["enable_deterministic_inference"] is False
    assert parsed["mem_fraction_static"] is None and parsed["max_running_requests"] is None
    assert "--enable-deterministic-inference" not in launch_command(plain, "h", 1)


def test_gpu_pinning() -> None:
    assert gpu_environment([2, 3, 5, 7], 4) == {"CUDA_VISIBLE_DEVICES": "2,3,5,7"}
    assert gpu_environment(None, 4) == {}
    with pytest.raises(ValueError):
        gpu_environment([0], 2)


def test_completion_payload_is_one_seeded_draw() -> None:
    sampling = SamplingParams(temperature=0.5, top_p=0.9, max_new_tokens=12, seed=3)
    payload = completion_payload("m", "<prompt>", sampling, 2**62 + 5, ["<|im_end|>"])
    assert payload == {"model": "m", "prompt": "<prompt>", "n": 1, "temperature": 0.5, "top_p": 0.9,
                       "max_tokens": 12, "seed": 2**62 + 5, "stop": ["<|im_end|>"]}
    assert parse_completion({"choices": [{"text": "x"}], "usage": {"completion_tokens": 4}}) == ("x", 4)
    with pytest.raises(ValueError, match="not a completions answer"):
        parse_completion({"error": "boom"})


# --- retries, backoff and timeouts against a real HTTP server in a thread -----------------


class ScriptedHandler(BaseHTTPRequestHandler):
    """Answers POSTs with the next (status, delay) of the server's script, then 200 {"ok": n}."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        server = self.server
        server.calls += 1  # type: ignore[attr-defined]
        status, delay = server.script.pop(0) if server.script else (200, 0.0)  # type: ignore[attr-defined]
        time.sleep(delay)
        body = json.dumps({"ok": server.calls} if status == 200 else {"error": "scripted"}).encode()  # type: ignore[attr-defined]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def scripted_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedHandler)
    server.script, server.calls = [], 0  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def url_of(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/v1/completions"


def test_5xx_and_timeouts_are_retried_until_an_answer(scripted_server: ThreadingHTTPServer) -> None:
    scripted_server.script = [(503, 0.0), (500, 0.0), (200, 1.5)]  # type: ignore[attr-defined]
    policy = RetryPolicy(timeout_s=0.5, attempts=6, backoff_s=0.05)
    # 503, 500, a reply too slow for the 0.5 s timeout, then the default quick 200.
    assert request_json(url_of(scripted_server), {}, policy) == {"ok": 4}


def test_4xx_fails_at_once_in_one_line(scripted_server: ThreadingHTTPServer) -> None:
    scripted_server.script = [(422, 0.0)]  # type: ignore[attr-defined]
    with pytest.raises(ServerError) as error:
        request_json(url_of(scripted_server), {}, RetryPolicy(attempts=5, backoff_s=0.05))
    assert scripted_server.calls == 1  # type: ignore[attr-defined]
    assert "HTTP 422" in str(error.value) and "\n" not in str(error.value)


def test_nobody_listening_fails_in_one_line_after_the_retries() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1/completions"
    start = time.monotonic()
    with pytest.raises(ServerError) as error:
        request_json(url, {}, RetryPolicy(timeout_s=1, attempts=3, backoff_s=0.1))
    assert time.monotonic() - start < 10
    assert "failed 3 times" in str(error.value) and "Connection" in str(error.value)
    assert "\n" not in str(error.value)


def test_backoff_doubles_up_to_its_cap() -> None:
    policy = RetryPolicy(backoff_s=0.5, max_backoff_s=3.0)
    assert [policy.wait_before(attempt) for attempt in range(2, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_health_wait_names_the_log_when_the_server_dies_or_never_answers(tmp_path: Path) -> None:
    dead = ServerProcess([sys.executable, "-c", "import sys; print('bad flag'); sys.exit(3)"], "test server",
                         log_path=tmp_path / "dead.log")
    with pytest.raises(ServerError) as error:
        wait_until_ready(f"http://127.0.0.1:{free_port()}", 60, dead, "test server")
    assert str(error.value) == f"test server exited with code 3: see {tmp_path / 'dead.log'}"
    assert "bad flag" in (tmp_path / "dead.log").read_text()
    silent = ServerProcess([sys.executable, "-c", "import time; time.sleep(600)"], "test server",
                           log_path=tmp_path / "silent.log")
    try:
        with pytest.raises(ServerError) as error:
            wait_until_ready(f"http://127.0.0.1:{free_port()}", 1.5, silent, "test server")
        assert "not ready within 1.5 s" in str(error.value) and str(tmp_path / "silent.log") in str(error.value)
    finally:
        silent.kill()
    assert silent.process.poll() is not None


# --- a real OpenAI-compatible server process (slow) ---------------------------------------


@pytest.fixture(scope="module")
def served_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The bundled model with sampling on by default, as SGLang samples when asked:
    `transformers serve` takes do_sample from the model's generation config."""
    from mucode.models import resolve_model

    source = Path(resolve_model(BUNDLED))
    model_dir = tmp_path_factory.mktemp("served-model")
    for file in source.iterdir():
        if file.name != "generation_config.json":
            (model_dir / file.name).symlink_to(file)
    config = json.loads((source / "generation_config.json").read_text())
    (model_dir / "generation_config.json").write_text(json.dumps({**config, "do_sample": True}))
    return str(model_dir)


def serve_command(model_dir: str, port: int) -> list[str]:
    return [sys.executable, "-m", "transformers.cli.transformers", "serve", model_dir, "--device", "cpu",
            "--host", "127.0.0.1", "--port", str(port)]


SERVER_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
# A restarted server needs a few seconds to load the model: the retries wait for it.
PATIENT = RetryPolicy(timeout_s=120, attempts=40, backoff_s=0.5, max_backoff_s=2.0)


def start_engine(model_dir: str, concurrency: int = 4, retry: RetryPolicy = PATIENT) -> ServerEngine:
    port = free_port()
    return ServerEngine(model_dir, f"http://127.0.0.1:{port}", command=serve_command(model_dir, port),
                        env=SERVER_ENV, name="test server", concurrency=concurrency, startup_timeout_s=300,
                        retry=retry)


@pytest.mark.slow
def test_batched_multi_turn_generation_through_a_real_server(served_model: str) -> None:
    """Two turns of the rollout stage's generation (``generate_turn``: turn 1 shares each
    problem's prompt over K samples, turn 2 sends every trajectory's own conversation).
    The sandbox verdicts are replaced by a fixed failing feedback: only generation is tested."""
    from mucode.environment import extend_conversation, initial_conversation
    from mucode.search import Search
    from mucode.tasks.rollout import generate_turn

    problems = [("t/add", "Write add(a, b).", "assert add(1, 2) == 3"),
                ("t/mul", "Write mul(a, b).", "assert mul(2, 3) == 6")]
    trajectories = [Search({"task_id": task}, rollout, initial_conversation(prompt, tests, ""))
                    for task, prompt, tests in problems for rollout in range(2)]
    sampling = SamplingParams(temperature=0.7, max_new_tokens=24, seed=1)
    drawn: list[int] = []
    with start_engine(served_model) as engine:
        assert engine.server is not None and engine.server.process.poll() is None
        first = generate_turn(engine, trajectories, 1, 2, sampling, chunk_size=8, on_chunk=drawn.append)
        assert len(first) == 4 and drawn == [4]
        for trajectory, answer in zip(trajectories, first):
            trajectory.conversation = extend_conversation(trajectory.conversation, answer, False,
                                                          "AssertionError")
        second = generate_turn(engine, trajectories, 2, 2, sampling, chunk_size=8, on_chunk=drawn.append)
        assert len(second) == 4 and drawn == [4, 4]
        assert all(isinstance(answer, str) and "<|im_end|>" not in answer for answer in first + second)
        assert engine.tokens_generated > 0
        replies = engine.generate(MULTI_TURN, 3, SamplingParams(temperature=1.0, max_new_tokens=8, seed=5))
        assert [len(samples) for samples in replies] == [3, 3]
        greedy = engine.generate(MULTI_TURN, 2, SamplingParams(temperature=0, max_new_tokens=8))
        assert all(samples[0] == samples[1] for samples in greedy)
        server = engine.server
    assert server.process.poll() is not None  # close() killed it


@pytest.mark.slow
def test_a_killed_server_fails_the_call_in_one_line_and_a_new_one_continues(served_model: str) -> None:
    engine = start_engine(served_model, concurrency=2)
    failure: list[BaseException] = []
    many = MULTI_TURN * 8

    def run() -> None:
        try:
            engine.generate(many, 2, SamplingParams(temperature=1.0, max_new_tokens=64, seed=2))
        except BaseException as error:  # noqa: BLE001 (handed to the test thread)
            failure.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(3)  # requests are in flight
    assert engine.server is not None
    os.killpg(engine.server.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    thread.join(120)
    assert not thread.is_alive() and time.monotonic() - killed_at < 60
    assert len(failure) == 1 and isinstance(failure[0], ServerError)
    message = str(failure[0])
    assert "\n" not in message and f"exited with code -{signal.SIGKILL}" in message
    assert str(engine.server.log_path) in message
    engine.close()
    with start_engine(served_model) as restarted:
        assert [len(s) for s in restarted.generate(MULTI_TURN, 2, SamplingParams(max_new_tokens=8))] == [2, 2]


@pytest.mark.slow
def test_an_attached_engine_rides_out_a_restart_and_a_stall(served_model: str, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = ServerProcess(serve_command(served_model, port), "test server", env=SERVER_ENV,
                           log_path=tmp_path / "server.log")
    try:
        wait_until_ready(url, 300, server, "test server")
        # One request at a time, so the server's per-request seed alone fixes each reply.
        engine = make_engine("sglang", served_model, base_url=url, batch_size=1, retry=PATIENT)
        sampling = SamplingParams(temperature=1.0, max_new_tokens=12, seed=9)
        first = engine.generate(MULTI_TURN, 2, sampling)

        server.kill()  # down: the next call retries until the new server answers
        result: list[list[list[str]]] = []
        thread = threading.Thread(target=lambda: result.append(engine.generate(MULTI_TURN, 2, sampling)))
        thread.start()
        time.sleep(2)
        server = ServerProcess(serve_command(served_model, port), "test server", env=SERVER_ENV,
                               log_path=tmp_path / "server2.log")
        thread.join(300)
        assert not thread.is_alive() and result == [first]  # same seeds, same replies

        os.kill(server.pid, signal.SIGSTOP)  # stalled: every try times out
        engine.retry = RetryPolicy(timeout_s=2, attempts=2, backoff_s=0.1)
        start = time.monotonic()
        with pytest.raises(ServerError) as error:
            engine.generate(MULTI_TURN[:1], 1, sampling)
        assert time.monotonic() - start < 30
        assert "failed 2 times, last: no answer within 2 s" in str(error.value) and "\n" not in str(error.value)
        os.kill(server.pid, signal.SIGCONT)
        engine.retry = PATIENT
        assert engine.generate(MULTI_TURN, 2, sampling) == first
        engine.close()
        assert server.process.poll() is None  # an attached engine leaves the server running
    finally:
        server.kill()
