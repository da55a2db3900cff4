"""Test-wide settings: offline data, quiet Prefect, shared paths, a tiny model to train."""

import os
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if SHARED_DATA.is_dir():
    os.environ.setdefault("MUCODE_DATA_DIR", str(SHARED_DATA))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ.get("MUCODE_DATA_DIR", SHARED_DATA))
    if not (path / "mbpp.jsonl").is_file():
        pytest.fail(f"MBPP not found at {path}: set MUCODE_DATA_DIR to the folder holding mbpp.jsonl")
    return path


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """One temporary Prefect server in this process for every test that runs flows here,
    with results persisted to a temporary directory."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    results = tmp_path_factory.mktemp("prefect-results")
    # 120 s, not 30: the server starts slowly on a machine busy with other work.
    with prefect_test_harness(server_startup_timeout=120), temporary_settings({PREFECT_LOCAL_STORAGE_PATH: results}):
        yield results


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """`scripts/prefect-server.sh start` (a real server and process worker) on a free port, once
    per session; yields the environment that reaches it.

    MUCODE_TEST_PREFECT_PORT picks the port instead; a server already answering there is
    reused (the script is idempotent) and only the worker is started and stopped.
    """
    from prefect_support import REPO, free_port, server_env

    port = int(os.environ.get("MUCODE_TEST_PREFECT_PORT") or free_port())
    env = server_env(tmp_path_factory.mktemp("prefect-home"), port)
    script = str(REPO / "scripts" / "prefect-server.sh")
    started = time.perf_counter()
    subprocess.run([script, "start"], env=env, check=True, capture_output=True, text=True, timeout=180)
    print(f"prefect-server.sh start: {time.perf_counter() - started:.1f} s")
    try:
        yield env
    finally:
        subprocess.run([script, "stop"], env=env, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A 1-layer random Llama with the bundled tokenizer: the training entry points' code path in seconds."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from mucode.config import BUNDLED_MODEL
    from mucode.models import load_tokenizer

    tokenizer = load_tokenizer(BUNDLED_MODEL)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    out = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)
