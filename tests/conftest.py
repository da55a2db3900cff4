"""Test-wide settings: offline data, quiet Prefect, shared paths."""

import os
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
