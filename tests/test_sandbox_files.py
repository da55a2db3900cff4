"""execute_file: JSONL and Parquet in, one Parquet verdict row per input row out, in order;
malformed rows become `error` rows, whole-file problems raise one clear error."""

import json

import polars as pl
import pytest

from mucode.sandbox.files import OUTPUT_SCHEMA, execute_file

GOOD = {"id": "good", "code": "def f():\n    return 1\n", "tests": "assert f() == 1\n"}
WRONG = {"id": "wrong", "code": "def f():\n    return 2\n", "tests": "assert f() == 1\n"}
LOOP = {"id": "loop", "code": "while True:\n    pass\n", "tests": ""}


def run_file(path, tmp_path):
    out = tmp_path / "verdicts" / "out.parquet"
    written = execute_file(path, out, backend="local", workers=2, timeout_s=1.0, memory_mb=256)
    frame = pl.read_parquet(out)
    assert frame.schema == pl.Schema(OUTPUT_SCHEMA)
    assert written == frame.height
    assert [entry.name for entry in out.parent.iterdir()] == ["out.parquet"]  # no partial file left
    return frame


def test_jsonl_rows_keep_their_order_and_malformed_rows_become_errors(tmp_path):
    lines = [
        json.dumps(GOOD),
        "{not json",
        json.dumps({"id": "no-tests", "code": "x = 1"}),
        "",  # a blank line is not a row
        json.dumps({"id": 7, "code": "x = 1", "tests": ""}),
        json.dumps(["a", "list"]),
        json.dumps(WRONG),
        json.dumps(LOOP),
    ]
    path = tmp_path / "programs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    frame = run_file(path, tmp_path)
    assert frame["id"].to_list() == ["good", "", "no-tests", "7", "", "wrong", "loop"]
    assert frame["status"].to_list() == ["passed", "error", "error", "error", "error", "failed", "timeout"]
    assert frame["passed"].to_list() == [True, False, False, False, False, False, False]
    feedback = frame["feedback"].to_list()
    assert feedback[0] == ""
    assert feedback[1].startswith("input row 2 is not valid JSON")
    assert feedback[2] == "input row 3: field 'tests' must be a string, but it is missing"
    assert feedback[3] == "input row 4: field 'id' must be a string, but it is a int"
    assert feedback[4] == "input row 5 is a list, not an object with id, code and tests"
    assert "AssertionError" in feedback[5]
    # The host's clock starts a moment after the worker's, which enforces the 1 s limit.
    assert frame["wall_s"][6] >= 0.95


def test_parquet_input_with_nulls(tmp_path):
    path = tmp_path / "programs.parquet"
    pl.DataFrame(
        {
            "id": ["good", "null-code", "wrong"],
            "code": [GOOD["code"], None, WRONG["code"]],
            "tests": [GOOD["tests"], "", WRONG["tests"]],
            "extra": [1, 2, 3],
        }
    ).write_parquet(path)
    frame = run_file(path, tmp_path)
    assert frame["id"].to_list() == ["good", "null-code", "wrong"]
    assert frame["status"].to_list() == ["passed", "error", "failed"]
    assert frame["feedback"][1] == "input row 2: field 'code' must be a string, but it is missing"


def test_only_malformed_rows_start_no_sandbox(tmp_path, monkeypatch):
    monkeypatch.setenv("MUCODE_SANDBOX_IMAGE", "mucode-sandbox:does-not-exist")  # docker would fail
    path = tmp_path / "bad.jsonl"
    path.write_text("[]\n")
    out = tmp_path / "out.parquet"
    assert execute_file(path, out, backend="docker") == 1
    assert pl.read_parquet(out)["status"].to_list() == ["error"]


def test_parquet_without_the_columns_is_refused(tmp_path):
    path = tmp_path / "programs.parquet"
    pl.DataFrame({"id": ["a"], "source": ["x"]}).write_parquet(path)
    with pytest.raises(ValueError, match="lacks the column\\(s\\) code, tests"):
        execute_file(path, tmp_path / "out.parquet", backend="local")


def test_unreadable_inputs_and_bad_settings_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        execute_file(tmp_path / "missing.jsonl", tmp_path / "out.parquet")
    odd = tmp_path / "programs.csv"
    odd.write_text("id,code,tests\n")
    with pytest.raises(ValueError, match="name it \\*.jsonl or \\*.parquet"):
        execute_file(odd, tmp_path / "out.parquet")
    good = tmp_path / "programs.jsonl"
    good.write_text(json.dumps(GOOD) + "\n")
    with pytest.raises(ValueError, match="timeout_s"):
        execute_file(good, tmp_path / "out.parquet", timeout_s=-1)
