"""Write a transformers checkpoint as a Q8_0 GGUF, for engines that read GGUF (openvino).

A checkpoint here is a safetensors model directory of a bundled model or of a model
fine-tuned from one (``tasks/finetune.py`` always saves merged weights). The bundled GGUF
the checkpoint descends from is its *template*: it is found by the tokenizer (the
template's token list must be the checkpoint's), and it supplies everything that is not a
weight: the architecture's hyper-parameters, the tokenizer and the chat template, and the
tensor names, shapes and order. The weights come from the checkpoint: every tensor the
template stores quantized is written as Q8_0 (8-bit blocks of 32 with one scale), the
norms and biases as float32.

Two facts of the GGUF layout are handled here: GGUF shapes are listed innermost first (the
reverse of numpy's), and llama.cpp stores the query and key projections of the ``llama``
architecture with each head's rotary halves interleaved (``interleave_rotary_halves``),
which transformers undoes when it loads a GGUF. ``qwen2`` keeps them as they are.

This module does not load a model for inference and does not quantize below 8 bits.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

# GGUF tensor name -> transformers name, by block; {i} is the layer.
BLOCK_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
TOP_TENSORS = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
               "output.weight": "lm_head.weight"}
SUPPORTED_ARCHITECTURES = ("llama", "qwen2")
# general.file_type of a GGUF whose weights are Q8_0 (llama.cpp's LLAMA_FTYPE_MOSTLY_Q8_0).
FILE_TYPE_Q8_0 = 7


class GGUFExportError(ValueError):
    """The checkpoint cannot be written as a GGUF; the message is one line."""


def transformers_name(gguf_name: str) -> str:
    """The transformers state-dict name of a GGUF tensor of a llama/qwen2 model."""
    if gguf_name in TOP_TENSORS:
        return TOP_TENSORS[gguf_name]
    match = re.fullmatch(r"blk\.(\d+)\.(.+)", gguf_name)
    if not match or match.group(2) not in BLOCK_TENSORS:
        raise GGUFExportError(f"GGUF tensor {gguf_name} has no transformers counterpart known here")
    return f"model.layers.{match.group(1)}.{BLOCK_TENSORS[match.group(2)]}"


def interleave_rotary_halves(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's row order of a llama q/k projection: in each head, the rows of the two
    rotary halves alternate (row r of the first half, then row r of the second)."""
    rows = weight.shape[0]
    head_dim = rows // heads
    return weight.reshape(heads, 2, head_dim // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def field_value(field) -> object:
    """The Python value of a GGUFReader field (a scalar, a string, or a list of either)."""
    from gguf.constants import GGUFValueType

    def one(part_index: int, value_type) -> object:
        part = field.parts[part_index]
        return bytes(part).decode("utf-8") if value_type == GGUFValueType.STRING else part.tolist()[0]

    if field.types[0] == GGUFValueType.ARRAY:
        return [one(index, field.types[-1]) for index in field.data]
    return one(field.data[0], field.types[0])


def architecture(reader) -> str:
    return str(field_value(reader.fields["general.architecture"]))


def gguf_tokens(reader) -> list[str]:
    return list(field_value(reader.fields["tokenizer.ggml.tokens"]))


def tokenizer_matches(reader, tokens: list[str]) -> bool:
    """True when the GGUF's token list starts with ``tokens`` (GGUF vocabularies may be
    padded to the embedding's rows)."""
    return gguf_tokens(reader)[: len(tokens)] == tokens


def checkpoint_tokens(model_dir: Path) -> list[str]:
    """The checkpoint's tokens in id order, as a GGUF lists them."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    return tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))


def head_counts(reader) -> tuple[int, int]:
    arch = architecture(reader)
    heads = int(field_value(reader.fields[f"{arch}.attention.head_count"]))
    kv_field = reader.fields.get(f"{arch}.attention.head_count_kv")
    return heads, int(field_value(kv_field)) if kv_field is not None else heads


def checkpoint_tensor_reader(model_dir: Path) -> Callable[[str], np.ndarray]:
    """``read(name)``: one tensor of the checkpoint's safetensors files, as float32 numpy."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise GGUFExportError(f"{model_dir} holds no *.safetensors weights to export")
    where = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            where.update({name: file for name in handle.keys()})

    def read(name: str) -> np.ndarray:
        if name not in where:
            raise GGUFExportError(f"{model_dir} has no tensor {name}: it is not of its template's architecture")
        with safe_open(str(where[name]), framework="pt") as handle:
            return handle.get_tensor(name).float().numpy()

    return read


def exported_tensors(reader, read: Callable[[str], np.ndarray]) -> Iterator[tuple[str, np.ndarray, bool]]:
    """(GGUF name, float32 weights in GGUF row order, quantize?) for every template tensor."""
    from gguf import GGMLQuantizationType

    arch = architecture(reader)
    heads, kv_heads = head_counts(reader)
    for tensor in reader.tensors:
        shape = tuple(int(size) for size in reversed(tensor.shape))  # numpy order
        weight = read(transformers_name(tensor.name))
        if weight.shape != shape:
            raise GGUFExportError(f"tensor {tensor.name} has shape {weight.shape} in the checkpoint and {shape} in "
                                  "its template: the checkpoint is not of the template's architecture")
        if arch == "llama" and tensor.name.endswith(("attn_q.weight", "attn_q.bias")):
            weight = interleave_rotary_halves(weight, heads)
        elif arch == "llama" and tensor.name.endswith(("attn_k.weight", "attn_k.bias")):
            weight = interleave_rotary_halves(weight, kv_heads)
        quantized = tensor.tensor_type not in (GGMLQuantizationType.F32, GGMLQuantizationType.F16)
        yield tensor.name, weight, quantized and weight.ndim == 2


def export_gguf(model_dir: str | Path, template: str | Path, out_path: str | Path) -> None:
    """Write the checkpoint in ``model_dir`` as a Q8_0 GGUF at ``out_path``, laid out as ``template``."""
    from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter
    from gguf.quants import quantize

    reader = GGUFReader(str(template))
    arch = architecture(reader)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise GGUFExportError(f"GGUF architecture {arch} is not supported: use one of {', '.join(SUPPORTED_ARCHITECTURES)}")
    writer = GGUFWriter(str(out_path), arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue  # the writer writes these itself
        value = FILE_TYPE_Q8_0 if name == "general.file_type" else field_value(field)
        writer.add_key_value(name, value, field.types[0], sub_type=field.types[-1] if len(field.types) > 1 else None)
    read = checkpoint_tensor_reader(Path(model_dir))
    for name, weight, quantized in exported_tensors(reader, read):
        if quantized:
            blocks = quantize(weight, GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, blocks, raw_shape=blocks.shape, raw_dtype=GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, np.ascontiguousarray(weight, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def find_template(model_dir: str | Path, scratch_dir: Path, models_cache: Path | None = None) -> Path:
    """The bundled GGUF whose tokenizer is the checkpoint's (joined into ``scratch_dir`` when split).

    Bundled models whose cached copy in ``models_cache`` has the checkpoint's tokenizer.json
    are tried first: reading a GGUF's vocabulary takes seconds, joining a split one more.
    """
    from gguf import GGUFReader

    from mucode.hashing import file_sha256
    from mucode.models import bundled_part_paths, default_cache_dir, list_bundled, verified_gguf

    def same_tokenizer_file(bundled_name: str) -> bool:
        cached = (models_cache or default_cache_dir()) / bundled_name / "tokenizer.json"
        mine = Path(model_dir) / "tokenizer.json"
        return cached.is_file() and mine.is_file() and file_sha256(cached) == file_sha256(mine)

    tokens = checkpoint_tokens(Path(model_dir))
    for bundled_name in sorted(list_bundled(), key=lambda name: not same_tokenizer_file(name)):
        try:
            parts = bundled_part_paths(bundled_name)
        except Exception:  # its packages are not installed: it cannot be this checkpoint's template
            continue
        gguf_path = verified_gguf(bundled_name, parts, scratch_dir)
        if tokenizer_matches(GGUFReader(str(gguf_path)), tokens):
            return gguf_path
        if gguf_path.parent == scratch_dir:
            gguf_path.unlink()
    raise GGUFExportError(f"{model_dir} has the tokenizer of no bundled model ({', '.join(list_bundled())}): "
                          "only those and models fine-tuned from them can be written as GGUF here")
