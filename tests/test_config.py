from pathlib import Path

import pytest

from mucode.config import BUNDLED_MODEL, ConfigError, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["smoke", "paper-1b", "paper-8b"])
def test_shipped_configs_load(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.name == name


def test_paper_settings_follow_the_reference():
    cfg = load_config(CONFIGS / "paper-1b.yaml")
    assert cfg.model.name == "meta-llama/Llama-3.2-1B-Instruct"
    assert (cfg.rollout.num_rollouts, cfg.rollout.max_turns, cfg.rollout.sampling.temperature) == (15, 3, 0.7)
    assert (cfg.finetune.learning_rate, cfg.verifier.learning_rate) == (5e-7, 1e-6)
    assert (cfg.finetune.epochs, cfg.verifier.epochs, cfg.iterations) == (2, 2, 2)
    assert (cfg.engine.kind, cfg.compute.num_gpus) == ("sglang", 4)
    assert load_config(CONFIGS / "paper-8b.yaml").model.name == "meta-llama/Llama-3.1-8B-Instruct"
    assert load_config(CONFIGS / "smoke.yaml").model.name == BUNDLED_MODEL


def test_unknown_key_is_one_line_naming_it(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("rollout:\n  num_rolouts: 3\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert "rollout.num_rolouts" in message and "\n" not in message


def test_bad_value_is_one_line_naming_it():
    with pytest.raises(ConfigError) as error:
        load_config(CONFIGS / "smoke.yaml", ["rollout.sampling.top_p=2"])
    assert "rollout.sampling.top_p" in str(error.value) and "\n" not in str(error.value)


def test_sglang_without_gpus_is_rejected():
    with pytest.raises(ConfigError, match="num_gpus"):
        load_config(CONFIGS / "smoke.yaml", ["engine.kind=sglang"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


def test_overrides_change_the_digest_and_sections_hash_independently():
    base = load_config(CONFIGS / "smoke.yaml")
    changed = load_config(CONFIGS / "smoke.yaml", {"finetune.epochs": 3})
    assert base.digest() != changed.digest()
    assert base.section_digest("rollout", "model") == changed.section_digest("rollout", "model")
    assert base.section_digest("finetune") != changed.section_digest("finetune")


def test_training_method_and_lora_settings_validate():
    cfg = load_config(CONFIGS / "smoke.yaml", {"finetune.method": "lora", "finetune.lora.rank": 8,
                                               "verifier.method": "lora", "verifier.lora.target_modules": ["q_proj"]})
    assert (cfg.finetune.method, cfg.finetune.lora.rank, cfg.verifier.lora.target_modules) == ("lora", 8, ["q_proj"])
    for name in ("paper-1b", "paper-8b"):
        paper = load_config(CONFIGS / f"{name}.yaml")
        assert (paper.finetune.method, paper.verifier.method) == ("full", "full")
    for override, key in [("finetune.method=qlora", "finetune.method"), ("verifier.lora.rank=0", "verifier.lora.rank"),
                          ("finetune.lora.dropout=1.5", "finetune.lora.dropout"),
                          ("finetune.lora.target_modules=[]", "finetune.lora"), ("finetune.lora=true", "finetune.lora"),
                          ("verifier.train_top_layers=0", "verifier.train_top_layers"),
                          ("verifier.gradient_accumulation_steps=0", "verifier.gradient_accumulation_steps")]:
        with pytest.raises(ConfigError) as error:
            load_config(CONFIGS / "smoke.yaml", [override])
        assert key in str(error.value) and "\n" not in str(error.value), override
