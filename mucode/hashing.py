"""sha256 in the forms mucode stores: of bytes or text, of a file or stream read in chunks,
and the short digest of a JSON-able value that config and checkpoint keys use.

One implementation, so a hash one module writes (an artifact name, a manifest, a cache key)
is the one another module computes to check it. What goes into a hash is the caller's
choice; this module only computes it. Not here: the digest of a stage's code
(`mucode.code_digest`, over syntax trees) and the sandbox worker's source hash (the worker
runs as its own program and imports nothing from mucode).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, BinaryIO

CHUNK_BYTES = 1 << 22
SHORT_DIGEST_CHARS = 16


def sha256_hex(data: bytes | str) -> str:
    """The sha256 of ``data`` (text as UTF-8), in hex."""
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def stream_sha256(stream: BinaryIO) -> str:
    """The sha256 of what is left in a binary stream, read in chunks (never whole in memory)."""
    digest = hashlib.sha256()
    while chunk := stream.read(CHUNK_BYTES):
        digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file, read in chunks."""
    with open(path, "rb") as handle:
        return stream_sha256(handle)


def json_digest(value: Any) -> str:
    """A short, stable digest of a JSON-able value: keys sorted, other values by their str."""
    return sha256_hex(json.dumps(value, sort_keys=True, default=str))[:SHORT_DIGEST_CHARS]
