"""The worker's version: a hash of its own source files.

The host compares it with the hash of the worker it ships, so a sandbox image built from
an older worker is refused with a clear message instead of judging programs differently.
"""

import hashlib
import os


def worker_source_hash(directory: str = os.path.dirname(os.path.abspath(__file__))) -> str:
    digest = hashlib.sha256()
    for name in sorted(os.listdir(directory)):
        if name.endswith(".py"):
            with open(os.path.join(directory, name), "rb") as source:
                digest.update(name.encode() + b"\0" + source.read() + b"\0")
    return digest.hexdigest()
