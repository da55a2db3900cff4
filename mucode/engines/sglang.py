"""The ``sglang`` engine: an SGLang server started on this machine (or attached to), for GPUs.

``make_sglang_engine`` builds the ``python -m sglang.launch_server`` command from
``engine_kwargs`` (SGLang's ServerArgs field names, flags by ``launch_command``), pins GPUs
through ``CUDA_VISIBLE_DEVICES`` and hands it to ``mucode.engines.server.ServerEngine``,
which waits for the server, sends it ``/v1/completions`` requests (chat template applied
client-side, one seeded request per draw) and kills the server's process group on
``close()``, so the GPU is free before training starts. With ``base_url`` it attaches to a
running server instead and starts nothing.

``seed`` reaches SGLang as ``sampling_seed``; it makes samples repeatable only when the
server runs with ``--enable-deterministic-inference`` (FlashInfer/FA3/Triton attention).

Not tested here: SGLang itself (it needs a GPU). The command is tested by parsing it; the
client, the process handling, retries and timeouts run for real against a CPU server
(`transformers serve` on the bundled model) in tests/test_server_engine.py.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from typing import Any

from mucode.engines.errors import EngineUnavailableError
from mucode.engines.http_json import RetryPolicy
from mucode.engines.server import ServerEngine
from mucode.engines.server_process import free_port
from mucode.models import ResolvedModel, resolve

SGLANG_MISSING = "the sglang engine needs a GPU machine and `pip install 'mucode[gpu]'`"
HOST = "127.0.0.1"


def require_sglang() -> None:
    """Raise one line unless SGLang is installed and a CUDA GPU is visible."""
    if importlib.util.find_spec("sglang") is None:
        raise EngineUnavailableError(SGLANG_MISSING)
    import torch

    if not torch.cuda.is_available():
        raise EngineUnavailableError(SGLANG_MISSING)


def engine_kwargs(
    model_path: str,
    tp_size: int,
    dp_size: int,
    base_gpu_id: int,
    mem_fraction_static: float | None,
    dtype: str,
    max_running_requests: int | None,
    deterministic: bool,
) -> dict[str, Any]:
    """SGLang ServerArgs fields for the server (``launch_command`` makes them flags)."""
    kwargs: dict[str, Any] = {
        "model_path": model_path,
        "tp_size": tp_size,
        "dp_size": dp_size,
        "base_gpu_id": base_gpu_id,
        "dtype": dtype,
        "log_level": "error",
        "enable_deterministic_inference": deterministic,
    }
    if mem_fraction_static is not None:
        kwargs["mem_fraction_static"] = mem_fraction_static
    if max_running_requests is not None:
        kwargs["max_running_requests"] = max_running_requests
    return kwargs


def gpu_environment(gpu_ids: Sequence[int] | None, gpus_needed: int) -> dict[str, str]:
    """``CUDA_VISIBLE_DEVICES`` for the server when the caller pins GPUs, else nothing."""
    if gpu_ids is None:
        return {}
    if len(gpu_ids) < gpus_needed:
        raise ValueError(f"tp_size x dp_size needs {gpus_needed} GPUs but gpu_ids lists {len(gpu_ids)}")
    return {"CUDA_VISIBLE_DEVICES": ",".join(str(gpu) for gpu in gpu_ids)}


def launch_command(kwargs: dict[str, Any], host: str, port: int) -> list[str]:
    """``python -m sglang.launch_server`` with one ``--flag value`` per ServerArgs field
    (a true boolean is a bare flag, a false one is left out)."""
    command = [sys.executable, "-m", "sglang.launch_server", "--host", host, "--port", str(port)]
    for field, value in kwargs.items():
        flag = "--" + field.replace("_", "-")
        if value is True:
            command.append(flag)
        elif value is not False and value is not None:
            command += [flag, str(value)]
    return command


def make_sglang_engine(
    model: str | ResolvedModel,
    tp_size: int = 1,
    dp_size: int = 1,
    gpu_ids: Sequence[int] | None = None,
    base_gpu_id: int = 0,
    mem_fraction_static: float | None = None,
    dtype: str = "auto",
    batch_size: int | None = None,
    deterministic: bool = False,
    startup_timeout_s: float = 1800.0,
    base_url: str | None = None,
    retry: RetryPolicy = RetryPolicy(),
) -> ServerEngine:
    """A ``ServerEngine`` on a new SGLang server (or the one at ``base_url``).

    ``batch_size`` caps SGLang's running requests and the requests in flight; ``gpu_ids``
    pins GPUs (then ``base_gpu_id`` must stay 0)."""
    concurrency = batch_size or 64
    if base_url is not None:
        return ServerEngine(model, base_url, name="sglang server", concurrency=concurrency,
                            startup_timeout_s=startup_timeout_s, retry=retry)
    require_sglang()
    if gpu_ids is not None and base_gpu_id != 0:
        raise ValueError("pass either gpu_ids or base_gpu_id, not both")
    model = resolve(model)
    kwargs = engine_kwargs(model.path, tp_size, dp_size, base_gpu_id, mem_fraction_static, dtype,
                           batch_size, deterministic)
    port = free_port(HOST)
    return ServerEngine(model, f"http://{HOST}:{port}", command=launch_command(kwargs, HOST, port),
                        env=gpu_environment(gpu_ids, tp_size * dp_size), name="sglang server",
                        concurrency=concurrency, startup_timeout_s=startup_timeout_s, retry=retry)
