"""Loaded by every Python process started with this directory on PYTHONPATH (the tests'
training ranks): logs each file the process opens for writing, renames or removes, one
path a line, to $MUCODE_WRITE_LOG/rank-$RANK.log. Files written from native code
(safetensors' Rust writer) are not seen; the JSON files saved beside them are."""

import os
import sys

_log_dir = os.environ.get("MUCODE_WRITE_LOG")
_writing_events = {"os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "shutil.copyfile"}
_busy = False


def _is_write(event: str, args: tuple) -> bool:
    if event == "open":
        mode, flags = args[1], args[2]
        if isinstance(mode, str):
            return any(letter in mode for letter in "wax+")
        return bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
    return event in _writing_events


def _log_writes(event: str, args: tuple) -> None:
    global _busy
    if _busy or not _is_write(event, args) or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    _busy = True  # writing the log line opens a file too
    try:
        with open(os.path.join(_log_dir, f"rank-{os.environ.get('RANK', 'none')}.log"), "a") as log:
            log.write(f"{event} {os.fsdecode(args[0])}\n")
    finally:
        _busy = False


if _log_dir and "RANK" in os.environ:
    sys.addaudithook(_log_writes)
