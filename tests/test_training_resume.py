"""Training checkpoints: a killed training stage, run again, resumes where its checkpoint left off.

Fast tests: which checkpoint is taken (a folder cut off mid-save is not), and where a stage
trains (a folder named after its config, inputs and code, kept when the stage fails and
removed when it is stored). Slow tests: the fine-tune and verifier entry points on a tiny
model, killed with SIGKILL after a checkpoint and run again, end with the weights of a run
that was never interrupted; in one process, and on two CPU ranks under `accelerate launch`
(DDP over gloo, the code path of a multi-GPU launch).
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from mucode.artifacts import ArtifactStore
from mucode.config import ComputeConfig, FinetuneConfig, VerifierConfig
from mucode.training import (REPO_ROOT, TRAINING_DIR, build_launch_command, drop_trainer_state, last_checkpoint,
                             resumable_out_dir)


def write_checkpoint(out_dir: Path, step: int, state: str = '{"global_step": 1}') -> Path:
    folder = out_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(state)
    return folder


def test_the_newest_finished_checkpoint_is_resumed_from(tmp_path):
    assert last_checkpoint(str(tmp_path)) is None
    write_checkpoint(tmp_path, 9)
    write_checkpoint(tmp_path, 10)  # 10 > 9 although "10" < "9" as text
    assert last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-10")
    write_checkpoint(tmp_path, 12, state='{"global_st')  # killed while writing its state
    (tmp_path / "checkpoint-13").mkdir()  # killed before writing its state
    assert last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-10")


def test_the_stored_model_leaves_the_checkpoints_behind(tmp_path):
    write_checkpoint(tmp_path, 3)
    (tmp_path / "training_args.bin").write_bytes(b"x")
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    drop_trainer_state(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_a_stage_trains_in_a_folder_named_by_what_decides_it(tmp_path):
    store = ArtifactStore(str(tmp_path))
    with resumable_out_dir(store, "finetune", "config-a", ["input-1"]) as first:
        pass
    with pytest.raises(RuntimeError):
        with resumable_out_dir(store, "finetune", "config-a", ["input-1"]) as out_dir:
            assert out_dir == first and Path(out_dir).parent == tmp_path / TRAINING_DIR
            write_checkpoint(Path(out_dir), 1)
            raise RuntimeError("killed")
    assert last_checkpoint(out_dir) is not None  # kept for the run that resumes
    with resumable_out_dir(store, "finetune", "config-b", ["input-1"]) as other_config, \
            resumable_out_dir(store, "finetune", "config-a", ["input-2"]) as other_input, \
            resumable_out_dir(store, "verifier", "config-a", ["input-1"]) as other_stage:
        assert len({out_dir, other_config, other_input, other_stage}) == 4
    with resumable_out_dir(store, "finetune", "config-a", ["input-1"]) as again:
        assert again == out_dir and last_checkpoint(again) is not None
    assert not Path(out_dir).exists()  # removed once the stage ended


def test_checkpoints_are_on_by_default_and_can_be_turned_off():
    assert ComputeConfig().checkpoint_every_s == 600
    assert ComputeConfig(checkpoint_every_s=None).checkpoint_every_s is None
    with pytest.raises(ValueError):
        ComputeConfig(checkpoint_every_s=0)


# ---------------------------------------------------------------- killed and resumed (slow)

CHECKPOINT_EVERY_S = 0.1  # tiny-model steps take ~5-50 ms: a checkpoint every few steps (or 10x a save)


def entry_point(stage: str, sections: dict, frames: dict, base: str, out_dir: Path, metrics: Path,
                ranks: int = 1) -> list[str]:
    """The stage's entry point in one process, or under `accelerate launch` on `ranks` CPU ranks."""
    args = ["--config-json", json.dumps(sections), "--base", base, "--out", str(out_dir), "--seed", "1",
            "--metrics", str(metrics)]
    for name, path in frames.items():
        args += [f"--{name}", str(path)]
    if ranks == 1:
        return [sys.executable, "-m", f"mucode.tasks.{stage}", *args]
    command = build_launch_command(stage, ComputeConfig(), args, cpu_processes=ranks, port=0)
    return [str(Path(sys.executable).parent / "accelerate"), *command[1:]]


def kill_after_a_checkpoint(command: list[str], out_dir: Path, at_least_step: int) -> int:
    """Start the command, SIGKILL its whole process group (every rank) once it has saved a
    checkpoint at `at_least_step` or later; the step of that checkpoint."""
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}, start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            found = last_checkpoint(str(out_dir)) if out_dir.is_dir() else None
            if found is not None and int(found.rsplit("-", 1)[1]) >= at_least_step:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return int(found.rsplit("-", 1)[1])
            assert process.poll() is None, f"training ended before a checkpoint: {process.stderr.read()[-2000:]}"
            time.sleep(0.05)
        pytest.fail("no checkpoint within 300 s")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def run_to_the_end(command: list[str]) -> str:
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def assert_same_weights(one: Path, two: Path):
    from safetensors.torch import load_file

    first, second = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert first.keys() == second.keys()
    assert max((first[k] - second[k]).abs().max().item() for k in first) < 1e-6


def resume_and_compare(tmp_path: Path, stage: str, section: str, settings, frames: dict, base: str,
                       steps: int, ranks: int = 1) -> tuple[dict, int]:
    """Kill a run after a checkpoint, run it again to the end, and check it against an unbroken run."""
    unbroken = {section: settings.model_dump(), "compute": ComputeConfig(checkpoint_every_s=None).model_dump()}
    checkpointed = {section: settings.model_dump(),
                    "compute": ComputeConfig(checkpoint_every_s=CHECKPOINT_EVERY_S).model_dump()}
    run_to_the_end(entry_point(stage, unbroken, frames, base, tmp_path / "unbroken", tmp_path / "unbroken.json",
                               ranks))
    resumed_dir = tmp_path / "resumed"
    command = entry_point(stage, checkpointed, frames, base, resumed_dir, tmp_path / "resumed.json", ranks)
    killed_at = kill_after_a_checkpoint(command, resumed_dir, at_least_step=2)
    assert killed_at < steps and not (tmp_path / "resumed.json").exists()
    stderr = run_to_the_end(command)
    assert f"resuming training from {resumed_dir}/checkpoint-" in stderr
    assert_same_weights(tmp_path / "unbroken", resumed_dir)
    assert not list(resumed_dir.glob("checkpoint-*"))
    metrics = json.loads((tmp_path / "resumed.json").read_text())
    assert [entry["step"] for entry in metrics["loss_log"]] == list(range(1, steps + 1))
    return metrics, killed_at


@pytest.mark.slow
@pytest.mark.parametrize(("method", "ranks"), [("full", 1), ("lora", 1), ("lora", 2)])
def test_a_killed_finetune_resumes_and_ends_as_an_unbroken_run(tiny_model, tmp_path, method, ranks):
    rows = [{"prompt_messages": json.dumps([{"role": "user", "content": f"task {i}"}]),
             "completion": f"```python\nx = {i}{'0' * i}\n```"} for i in range(4)]
    pl.DataFrame(rows).write_parquet(tmp_path / "sft.parquet")
    steps = 60 if ranks == 1 else 30  # a global batch of 2: 2 steps per epoch
    cfg = FinetuneConfig(method=method, learning_rate=1e-3, epochs=steps // 2, batch_size=2, max_length=64)
    _, killed_at = resume_and_compare(tmp_path, "finetune", "finetune", cfg, {"sft": tmp_path / "sft.parquet"},
                                      tiny_model, steps=steps, ranks=ranks)
    print(f"{method} on {ranks} rank(s): killed after checkpoint-{killed_at} of {steps} steps, resumed to the "
          "unbroken run's weights")


@pytest.mark.slow
def test_a_killed_verifier_resumes_and_ends_as_an_unbroken_run(tiny_model, tmp_path):
    from test_training_launch import verifier_frames

    aggregated, problems = verifier_frames(4)
    aggregated.write_parquet(tmp_path / "aggregated.parquet")
    problems.write_parquet(tmp_path / "problems.parquet")
    cfg = VerifierConfig(method="lora", pairs_per_problem=1, learning_rate=1e-3, epochs=60, batch_size=2,
                         max_length=64, heldout_fraction=0.0)
    frames = {"aggregated": tmp_path / "aggregated.parquet", "problems": tmp_path / "problems.parquet"}
    _, killed_at = resume_and_compare(tmp_path, "verifier", "verifier", cfg, frames, tiny_model, steps=120)
    print(f"verifier: killed after checkpoint-{killed_at} of 120 steps, resumed to the unbroken run's weights")
