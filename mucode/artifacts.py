"""Content-addressed, atomically written, verified artifacts of a run.

A stage writes a polars frame (Parquet) or a model directory (safetensors) through an
`ArtifactStore`. The file is named by the sha256 of its bytes, written to a temporary
name and renamed into place, and a JSON manifest beside it records the producing stage,
config hash, code version, the digest of the code that wrote it (`code`: the running
stage's modules, `mucode.code_digest`), input artifact hashes, row count and creation time. Reading
re-hashes the bytes: a corrupt or truncated artifact raises `CorruptArtifactError`, never
returns data. Paths are local by default; any fsspec URL (s3://, gs://, memory://) works
through the same interface. This module knows nothing about what the frames contain.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem
import polars as pl

from mucode.code_digest import current_code
from mucode.hashing import sha256_hex, stream_sha256

HASH_CHARS = 20  # hex digits of sha256 kept in names: 80 bits, collisions not a concern


class ArtifactError(RuntimeError):
    """An artifact is missing or unusable; the message is one line."""


class CorruptArtifactError(ArtifactError):
    """The bytes on storage no longer match the artifact's content hash."""


@dataclass(frozen=True)
class Artifact:
    """A small, picklable reference to a stored artifact: what tasks return."""

    hash: str
    path: str
    kind: str  # "frame" or "dir"
    stage: str
    rows: int | None = None

    def __str__(self) -> str:
        return self.path


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit of the code (with '+dirty' for local edits), else the package version."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("mucode")
        except PackageNotFoundError:
            return "unknown"


def frame_to_parquet_bytes(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    # No statistics timestamps etc.: equal frames give equal bytes, hence equal hashes.
    frame.write_parquet(buffer, compression="zstd", statistics=False)
    return buffer.getvalue()


def local_directory(root: str) -> Path | None:
    """The directory of an experiment root given as a path or file:// URL; None for an object store."""
    if "://" in root and not root.startswith("file://"):
        return None
    return Path(root.removeprefix("file://"))


def write_atomically(url: str | os.PathLike, data: bytes, filesystem: fsspec.AbstractFileSystem | None = None) -> None:
    """Write `data` to `url` so that readers see the old file or the new one, never half of one.

    A temporary file beside the target, flushed to disk, then renamed over it (an atomic
    rename on POSIX; object stores write whole objects anyway).
    """
    if filesystem is None:
        filesystem, path = fsspec.core.url_to_fs(str(url))
    else:
        path = str(url)
    parent = path.rsplit("/", 1)[0]
    filesystem.makedirs(parent, exist_ok=True)
    temporary = f"{parent}/.tmp-{uuid.uuid4().hex}"
    local = isinstance(filesystem, LocalFileSystem)
    with filesystem.open(temporary, "wb") as handle:
        handle.write(data)
        if local:
            handle.flush()
            os.fsync(handle.fileno())
    if local:
        os.replace(temporary, path)
    else:
        filesystem.mv(temporary, path)


def root_url(root: str, name: str) -> str:
    """The path or URL of file `name` directly under an experiment root (a path or fsspec URL)."""
    return f"{root.rstrip('/')}/{name}"


def append_json_line(url: str | os.PathLike, record: dict) -> None:
    """Add `record` as the last line of the JSONL file at `url` (created when missing).

    Locally one short O_APPEND write, so appends from two processes never interleave. Object
    stores cannot append: the (small) file is read and rewritten whole, so two writers at the
    same moment can lose one line there.
    """
    line = json.dumps(record) + "\n"
    filesystem, path = fsspec.core.url_to_fs(str(url))
    if isinstance(filesystem, LocalFileSystem):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as handle:
            handle.write(line)
        return
    earlier = filesystem.cat_file(path) if filesystem.exists(path) else b""
    write_atomically(path, earlier + line.encode(), filesystem)


def read_json_lines(url: str | os.PathLike) -> list[dict]:
    """Every record of an append-only JSONL file, oldest first (empty when there is none);
    a line cut short by a crash is skipped."""
    filesystem, path = fsspec.core.url_to_fs(str(url))
    if not filesystem.isfile(path):
        return []
    records = []
    for line in filesystem.cat_file(path).decode().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class ArtifactStore:
    """Artifacts of one run directory (local path or fsspec URL)."""

    def __init__(self, root: str | os.PathLike):
        self.root = str(root).rstrip("/")
        self.fs, self.base = fsspec.core.url_to_fs(self.root)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.fs.makedirs(self._join("artifacts"), exist_ok=True)

    # -- paths ---------------------------------------------------------------------------
    def _join(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    def _url(self, path: str) -> str:
        return path if self.is_local else self.fs.unstrip_protocol(path)

    def _frame_path(self, stage: str, digest: str) -> str:
        return self._join("artifacts", stage, f"{digest[:HASH_CHARS]}.parquet")

    def _dir_path(self, stage: str, digest: str) -> str:
        return self._join("artifacts", stage, digest[:HASH_CHARS])

    @staticmethod
    def manifest_path(path: str) -> str:
        return path.removesuffix(".parquet") + ".json"

    # -- writing -------------------------------------------------------------------------
    def _write_manifest(self, path: str, manifest: dict) -> None:
        text = json.dumps(json_safe(manifest), indent=2, sort_keys=True, allow_nan=False)
        self._atomic_write(self.manifest_path(path), text.encode())

    def _atomic_write(self, path: str, data: bytes) -> None:
        write_atomically(path, data, self.fs)

    def _manifest(self, *, stage: str, kind: str, digest: str, config_hash: str, inputs: list[str],
                  rows: int | None, extra: dict | None) -> dict:
        return {
            "stage": stage,
            "kind": kind,
            "sha256": digest,
            "config_hash": config_hash,
            "code_version": code_version(),
            "code": current_code().manifest_entry(),  # a git commit misses dirty trees and wheels
            "inputs": list(inputs),
            "rows": rows,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            **(extra or {}),
        }

    def put_frame(self, frame: pl.DataFrame, *, stage: str, config_hash: str = "",
                  inputs: list[str] | None = None, extra: dict | None = None) -> Artifact:
        data = frame_to_parquet_bytes(frame)
        digest = sha256_hex(data)
        path = self._frame_path(stage, digest)
        if not self._frame_matches(path, digest):
            self._atomic_write(path, data)
        self._write_manifest(path, self._manifest(stage=stage, kind="frame", digest=digest,
                                                  config_hash=config_hash, inputs=inputs or [],
                                                  rows=frame.height, extra=extra))
        return Artifact(hash=digest[:HASH_CHARS], path=self._url(path), kind="frame", stage=stage, rows=frame.height)

    def put_dir(self, source: str | os.PathLike, *, stage: str, config_hash: str = "",
                inputs: list[str] | None = None, extra: dict | None = None) -> Artifact:
        """Store a local directory (a model) under its content hash; the source is left as is."""
        source = Path(source)
        if not source.is_dir():
            raise ArtifactError(f"cannot store {source}: not a directory")
        files = directory_file_hashes(source)
        digest = sha256_hex(json.dumps(files, sort_keys=True))
        path = self._dir_path(stage, digest)
        if not self._dir_matches(path, files):
            self._copy_dir_atomically(source, path)
        self._write_manifest(path, self._manifest(stage=stage, kind="dir", digest=digest, config_hash=config_hash,
                                                  inputs=inputs or [], rows=None,
                                                  extra={"files": files, **(extra or {})}))
        return Artifact(hash=digest[:HASH_CHARS], path=self._url(path), kind="dir", stage=stage)

    def _copy_dir_atomically(self, source: Path, path: str) -> None:
        parent = path.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        temporary = f"{parent}/.tmp-{uuid.uuid4().hex}"
        self.fs.put(str(source), temporary, recursive=True)
        if self.fs.exists(path):  # a stale or corrupt copy: replace it
            self.fs.rm(path, recursive=True)
        if self.is_local:
            os.replace(temporary, path)
        else:
            self.fs.mv(temporary, path, recursive=True)

    def local_folder(self, *parts: str) -> Path:
        """A local folder for files that are not artifacts (checkpoints, kept engine replies,
        reports): ROOT/parts for a local store; for a remote one, a folder of this store's own
        in local temp (`publish` copies it to the store)."""
        base = (Path(self.base) if self.is_local
                else Path(tempfile.gettempdir()) / "mucode-local" / sha256_hex(self.root)[:16])
        return base.joinpath(*parts)

    def publish(self, *parts: str) -> str:
        """Copy the file or folder `local_folder(*parts)` to ROOT/parts of a remote store, each file
        atomically; a local store already holds it. Returns its path or URL in the store."""
        target = self._join(*parts)
        if not self.is_local:
            source = self.local_folder(*parts)
            files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
            for file in files:
                relative = file.relative_to(source).parts if file != source else ()
                write_atomically("/".join([target, *relative]), file.read_bytes(), self.fs)
        return self._url(target)

    # -- reading -------------------------------------------------------------------------
    def _frame_matches(self, path: str, digest: str) -> bool:
        if not self.fs.exists(path):
            return False
        with self.fs.open(path, "rb") as handle:
            return stream_sha256(handle) == digest

    def _dir_matches(self, path: str, files: dict[str, str]) -> bool:
        if not self.fs.exists(path):
            return False
        local = self._local_dir(path)
        try:
            return directory_file_hashes(Path(local)) == files
        except OSError:
            return False

    def _local_dir(self, path: str) -> str:
        if self.is_local:
            return path
        cache = Path(tempfile.gettempdir()) / "mucode-artifacts" / sha256_hex(path)[:16]
        if not cache.exists():
            staging = cache.with_name(cache.name + f".tmp-{uuid.uuid4().hex}")
            self.fs.get(path, str(staging), recursive=True)
            os.replace(staging, cache)
        return str(cache)

    def _resolve(self, ref: Artifact | str) -> tuple[str, dict]:
        path = ref.path if isinstance(ref, Artifact) else str(ref)
        path = fsspec.core.url_to_fs(path)[1] if "://" in path else path
        manifest_path = self.manifest_path(path)
        if not self.fs.exists(path):
            raise ArtifactError(f"artifact {path} is missing: re-run the stage that produces it")
        if not self.fs.exists(manifest_path):
            raise CorruptArtifactError(f"artifact {path} has no manifest: it was not written by mucode; re-run its stage")
        try:
            manifest = json.loads(self.fs.cat_file(manifest_path))
        except json.JSONDecodeError:
            raise CorruptArtifactError(f"manifest of {path} is not valid JSON: re-run its stage") from None
        return path, manifest

    def ref(self, path: str) -> Artifact:
        """The `Artifact` reference of a stored path (e.g. given on a command line)."""
        resolved, manifest = self._resolve(path)
        return Artifact(hash=manifest["sha256"][:HASH_CHARS], path=self._url(resolved), kind=manifest["kind"],
                        stage=manifest["stage"], rows=manifest.get("rows"))

    def manifest(self, ref: Artifact | str) -> dict:
        return self._resolve(ref)[1]

    def get_frame(self, ref: Artifact | str) -> pl.DataFrame:
        path, manifest = self._resolve(ref)
        with self.fs.open(path, "rb") as handle:
            data = handle.read()
        if sha256_hex(data) != manifest["sha256"]:
            raise CorruptArtifactError(f"artifact {path} is corrupt (content hash mismatch): delete it and re-run its stage")
        return pl.read_parquet(io.BytesIO(data))

    def get_dir(self, ref: Artifact | str) -> str:
        """A local directory path holding the verified artifact."""
        path, manifest = self._resolve(ref)
        if not self._dir_matches(path, manifest.get("files", {})):
            raise CorruptArtifactError(f"artifact {path} is corrupt (files differ from its manifest): delete it and re-run its stage")
        return self._local_dir(path)

    def is_valid(self, ref: Artifact | str) -> bool:
        """True when the artifact exists and its bytes match its hash."""
        try:
            path, manifest = self._resolve(ref)
            if manifest["kind"] == "dir":
                return self._dir_matches(path, manifest.get("files", {}))
            return self._frame_matches(path, manifest["sha256"])
        except (ArtifactError, OSError, KeyError):
            return False

    def list(self, stage: str | None = None) -> list[dict]:
        """Manifests of all artifacts (of one stage), oldest first."""
        pattern = self._join("artifacts", stage or "*", "*.json")
        manifests = []
        for manifest_path in self.fs.glob(pattern):
            try:
                manifest = json.loads(self.fs.cat_file(manifest_path))
            except json.JSONDecodeError as error:
                # Listed artifacts are read later by their manifests: say which one is lost.
                print(f"skipped {self._url(manifest_path)}: corrupt manifest ({error}); re-run its stage",
                      file=sys.stderr)
                continue
            suffix = ".parquet" if manifest.get("kind") == "frame" else ""
            manifest["path"] = self._url(manifest_path.removesuffix(".json") + suffix)
            manifests.append(manifest)
        return sorted(manifests, key=lambda m: m.get("created", ""))


def json_safe(value):
    """`value` with NaN and infinities replaced by None, so manifests stay strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def directory_file_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file under `directory`, keyed by relative path (hidden files skipped)."""
    hashes = {}
    for file in sorted(directory.rglob("*")):
        relative = file.relative_to(directory).as_posix()
        if file.is_file() and not any(part.startswith(".") for part in relative.split("/")):
            with file.open("rb") as handle:
                hashes[relative] = stream_sha256(handle)
    return hashes

