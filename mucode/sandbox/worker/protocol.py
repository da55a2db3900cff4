"""Length-prefixed JSON frames between the host and a sandbox worker.

A frame is a 4-byte big-endian length followed by that many bytes of JSON (one object,
ASCII-escaped so any Python string, lone surrogates included, round-trips). Does not know
what the messages mean: main.py (worker side) and mucode/sandbox/client.py (host side) do.
"""

import json
import os
import struct
from collections.abc import Callable

MAX_FRAME_BYTES = 256 * 1024 * 1024
_HEADER = struct.Struct(">I")


class ProtocolError(Exception):
    """A frame was truncated, too large, or not a JSON object."""


def encode_frame(message: dict) -> bytes:
    body = json.dumps(message, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    if len(body) > MAX_FRAME_BYTES:
        raise ProtocolError(
            f"frame of {len(body)} bytes exceeds the {MAX_FRAME_BYTES}-byte limit: send smaller programs"
        )
    return _HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> dict:
    try:
        message = json.loads(body.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"frame body is not ASCII JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"frame body is a JSON {type(message).__name__}, expected an object")
    return message


def read_frame(read_exact: Callable[[int], bytes]) -> dict | None:
    """Read one frame; None on a clean end of stream before its first byte.

    read_exact(n) returns exactly n bytes, or fewer only at the end of the stream.
    """
    header = read_exact(_HEADER.size)
    if not header:
        return None
    if len(header) != _HEADER.size:
        raise ProtocolError("stream ended inside a frame header")
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME_BYTES:
        raise ProtocolError(f"announced frame of {length} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")
    body = read_exact(length)
    if len(body) != length:
        raise ProtocolError(f"stream ended inside a frame body ({len(body)} of {length} bytes)")
    return decode_body(body)


def fd_reader(fd: int) -> Callable[[int], bytes]:
    """read_exact over a blocking file descriptor."""

    def read_exact(size: int) -> bytes:
        chunks = []
        remaining = size
        while remaining:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    return read_exact


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
