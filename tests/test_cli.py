"""The command line turns bad input into one line on stderr and exit code 2."""

import polars as pl
import pytest
from typer.testing import CliRunner

from mucode.cli import app

runner = CliRunner()


@pytest.mark.parametrize("arguments, expected", [
    (["data", "mbpp", "--split", "train", "--out", "x.parquet", "--data-dir", "/nonexistent"], "/nonexistent does not exist"),
    (["rollout", "--config", "configs/nope.yaml", "--out", "r.parquet"], "config file configs/nope.yaml does not exist"),
    (["model", "/no/such/model"], "model path /no/such/model does not exist"),
    (["evaluate", "--config", "configs/smoke.yaml", "--generator", "g", "--dataset", "humaneval", "--out", "o",
      "--selection", "pt+lv"], "selection pt+lv needs --verifier"),
    (["stage", "nope", "--config", "configs/smoke.yaml"], "unknown stage 'nope'"),
    (["train", "--set", "rollout.num_rolouts=2"], "unknown key 'rollout.num_rolouts'"),
    (["compare", "--override", "rollout.num_rolouts=2"], "unknown key 'rollout.num_rolouts'"),
    (["compare", "--plan", "--speed", "nope=1"], "unknown name 'nope' in 'nope=1'"),
])
def test_bad_input_is_one_line(arguments, expected):
    result = runner.invoke(app, arguments)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.output


def test_data_command_writes_problems(tmp_path, data_dir):
    out = tmp_path / "problems.parquet"
    result = runner.invoke(app, ["data", "mbpp", "--split", "test", "--out", str(out), "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    frame = pl.read_parquet(out)
    assert frame.height == 500 and frame["task_id"][0] == "mbpp/11"


def test_rollout_command_runs_the_stages_and_writes_the_rollouts(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import yaml

    import mucode.stage_resources as resources
    from mucode.engines.base import Engine

    class WrongAnswers(Engine):
        def generate(self, conversations, n, sampling, streams=None):
            return [["```python\nx = 1\n```"] * n for _ in conversations]

        def close(self):
            pass

    monkeypatch.setattr(resources, "generator_model", lambda cfg, store, model: SimpleNamespace(path="wrong"))
    monkeypatch.setattr(resources, "make_engine_from_config", lambda cfg, model: WrongAnswers())
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "runs"), "sandbox": {"backend": "local", "workers": 2},
                                      "rollout": {"num_rollouts": 2, "max_turns": 2}}))
    out = tmp_path / "rollouts.parquet"
    result = runner.invoke(app, ["rollout", "--config", str(config), "--out", str(out), "--limit", "2"])
    assert result.exit_code == 0, result.output
    frame = pl.read_parquet(out)
    assert frame.height == 2 * 2 * 2 and not frame["private_passed"].any()
    assert result.output.strip() == f"wrote 8 turns of 4 rollouts to {out}; final pass rate 0.000"
    assert len(list((tmp_path / "runs" / "smoke" / "artifacts" / "rollout").glob("*.parquet"))) == 1
