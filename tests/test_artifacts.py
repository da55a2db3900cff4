import json
from pathlib import Path

import polars as pl
import pytest

from mucode.artifacts import ArtifactError, ArtifactStore, CorruptArtifactError, append_json_line, read_json_lines


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path):
    root = str(tmp_path / "run") if request.param == "local" else f"memory://{tmp_path.name}"
    return ArtifactStore(root)


def test_frame_round_trip_and_manifest(store):
    frame = pl.DataFrame({"task_id": ["a", "b"], "passed": [True, False]})
    artifact = store.put_frame(frame, stage="rollout", config_hash="cfg1", inputs=["in1"])
    assert store.get_frame(artifact).equals(frame)
    manifest = store.manifest(artifact)
    assert manifest["stage"] == "rollout" and manifest["rows"] == 2
    assert manifest["inputs"] == ["in1"] and manifest["config_hash"] == "cfg1"
    assert manifest["sha256"].startswith(artifact.hash) and manifest["code_version"]
    assert artifact.hash in artifact.path


def test_content_addressing(store):
    first = store.put_frame(pl.DataFrame({"x": [1]}), stage="s")
    second = store.put_frame(pl.DataFrame({"x": [1]}), stage="s")
    third = store.put_frame(pl.DataFrame({"x": [2]}), stage="s")
    assert first.path == second.path and first.hash != third.hash


def test_truncated_frame_is_reported_not_used(tmp_path):
    store = ArtifactStore(tmp_path)
    artifact = store.put_frame(pl.DataFrame({"x": list(range(1000))}), stage="s")
    data = open(artifact.path, "rb").read()
    open(artifact.path, "wb").write(data[: len(data) // 2])
    assert not store.is_valid(artifact)
    with pytest.raises(CorruptArtifactError, match="corrupt"):
        store.get_frame(artifact)


def test_missing_artifact_and_missing_manifest(tmp_path):
    store = ArtifactStore(tmp_path)
    artifact = store.put_frame(pl.DataFrame({"x": [1]}), stage="s")
    (tmp_path / "artifacts" / "s" / f"{artifact.hash}.json").unlink()
    with pytest.raises(CorruptArtifactError, match="manifest"):
        store.get_frame(artifact)
    (tmp_path / "artifacts" / "s" / f"{artifact.hash}.parquet").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        store.get_frame(artifact)
    assert not store.is_valid(artifact)


def test_directory_artifact_detects_changed_file(tmp_path):
    source = tmp_path / "model"
    source.mkdir()
    (source / "model.safetensors").write_bytes(b"weights" * 100)
    (source / "config.json").write_text(json.dumps({"a": 1}))
    store = ArtifactStore(tmp_path / "run")
    artifact = store.put_dir(source, stage="finetune")
    stored = store.get_dir(artifact)
    assert sorted(p.name for p in Path(stored).iterdir()) == ["config.json", "model.safetensors"]
    (Path(stored) / "model.safetensors").write_bytes(b"weights")
    assert not store.is_valid(artifact)
    with pytest.raises(CorruptArtifactError):
        store.get_dir(artifact)
    # Storing the same content again repairs it.
    repaired = store.put_dir(source, stage="finetune")
    assert repaired == artifact and store.is_valid(artifact)


def test_no_temporary_files_left(tmp_path):
    store = ArtifactStore(tmp_path)
    store.put_frame(pl.DataFrame({"x": [1]}), stage="s")
    assert not [p for p in tmp_path.rglob(".tmp-*")]


def test_list_returns_manifests_by_stage(tmp_path):
    store = ArtifactStore(tmp_path)
    store.put_frame(pl.DataFrame({"x": [1]}), stage="a")
    store.put_frame(pl.DataFrame({"x": [2]}), stage="b")
    assert [m["stage"] for m in store.list("a")] == ["a"]
    assert len(store.list()) == 2


def test_json_lines_append_in_order_and_skip_a_line_cut_short(store):
    url = f"{store.root}/timings.jsonl"
    assert read_json_lines(url) == []
    append_json_line(url, {"stage": "rollout", "wall_s": 1.5})
    append_json_line(url, {"stage": "execute", "wall_s": 2.0})
    path = f"{store.base}/timings.jsonl"
    store.fs.pipe_file(path, store.fs.cat_file(path) + b'{"stage": "fine')  # a crash mid-line
    assert read_json_lines(url) == [{"stage": "rollout", "wall_s": 1.5}, {"stage": "execute", "wall_s": 2.0}]


def test_a_local_folder_is_published_to_the_store(store):
    report = store.local_folder("report")
    (report / "plots").mkdir(parents=True, exist_ok=True)
    (report / "report.md").write_text("# Table 1\n")
    (report / "plots" / "curves.png").write_bytes(b"png")
    target = store.publish("report")
    assert target.endswith("report")
    assert store.fs.cat_file(f"{store.base}/report/report.md") == b"# Table 1\n"
    assert store.fs.cat_file(f"{store.base}/report/plots/curves.png") == b"png"
    store.local_folder("nightly.png").write_bytes(b"plot")  # a single file
    store.publish("nightly.png")
    assert store.fs.cat_file(f"{store.base}/nightly.png") == b"plot"
    # A remote store's local folder is its own: two experiments never share one.
    assert (store.local_folder() == Path(store.base)) == store.is_local
    if not store.is_local:
        assert ArtifactStore(store.root + "-other").local_folder() != store.local_folder()
