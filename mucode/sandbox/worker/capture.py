"""A bounded capture of a program's stdout and stderr.

Keeps the first and the last half of the bound and counts what was dropped in between, so
an output flood costs the worker constant memory while a crash message at the end survives.
Does not read any file descriptor itself (supervise.py feeds it).
"""


class BoundedCapture:
    def __init__(self, limit_bytes: int) -> None:
        self._half = max(1, limit_bytes // 2)
        self._head = bytearray()
        self._tail = bytearray()
        self.dropped_bytes = 0

    def add(self, chunk: bytes) -> None:
        room = self._half - len(self._head)
        if room > 0:
            self._head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self._tail += chunk
            excess = len(self._tail) - self._half
            if excess > 0:
                self.dropped_bytes += excess
                del self._tail[:excess]

    def text(self) -> str:
        middle = f"\n... [{self.dropped_bytes} bytes of output dropped] ...\n".encode() if self.dropped_bytes else b""
        return bytes(self._head + middle + self._tail).decode("utf-8", errors="replace")
