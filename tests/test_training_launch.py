"""Multi-GPU launch, tested up to the point a GPU is needed.

The accelerate command is built and checked by accelerate's own argument parser and
validation; the config files are read by accelerate's loader; `run_training` is checked to
hand its frames and options to the launched entry point; (slow) the stage entry points
run on CPU in a subprocess, the same code each accelerate rank would run; and (slow) they
run on two CPU ranks under `accelerate launch` (DDP over gloo) and are compared with one
process. FSDP and ZeRO-3 need GPUs: their commands are parsed only.
"""

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from mucode.config import ComputeConfig, FinetuneConfig, VerifierConfig
from mucode.training import (ACCELERATE_CONFIG_DIR, REPO_ROOT, TrainingLaunchError, accelerate_config_path,
                             build_launch_command, per_device_batch_size, run_training)

ZERO3 = ComputeConfig(num_gpus=4, distributed="deepspeed-zero3", bf16=True, gradient_checkpointing=True)
FSDP = ComputeConfig(num_gpus=4, distributed="fsdp", bf16=True, gradient_checkpointing=True)


def validated(command):
    """accelerate's own reading of a launch command (what `accelerate launch` does before spawning)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    assert command[:2] == ["accelerate", "launch"]
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(command[2:]))
    return args


def test_zero3_command():
    command = build_launch_command("finetune", ZERO3, ["--sft", "x.parquet"])
    assert command == ["accelerate", "launch", "--config_file", str(ACCELERATE_CONFIG_DIR / "deepspeed-zero3.yaml"),
                       "--num_processes", "4", "--mixed_precision", "bf16", "-m", "mucode.tasks.finetune",
                       "--sft", "x.parquet"]
    args = validated(command)
    assert args.use_deepspeed and not args.use_fsdp
    assert (args.num_processes, args.mixed_precision, args.zero_stage) == (4, "bf16", 3)
    assert args.zero3_init_flag and args.zero3_save_16bit_model
    assert args.module and args.training_script == "mucode.tasks.finetune"
    assert args.training_script_args == ["--sft", "x.parquet"]


def test_fsdp_command_and_the_environment_its_workers_get():
    from accelerate.utils.launch import prepare_multi_gpu_env

    command = build_launch_command("verifier", FSDP, ["--aggregated", "a.parquet"])
    assert command[:11] == ["accelerate", "launch", "--config_file", str(ACCELERATE_CONFIG_DIR / "fsdp.yaml"),
                            "--num_processes", "4", "--mixed_precision", "bf16",
                            "--fsdp_activation_checkpointing", "true", "-m"]
    env = prepare_multi_gpu_env(validated(command))
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    assert env["FSDP_SHARDING_STRATEGY"] == "FULL_SHARD" and env["FSDP_RESHARD_AFTER_FORWARD"] == "true"
    assert env["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16" and env["FSDP_ACTIVATION_CHECKPOINTING"] == "true"
    no_checkpointing = FSDP.model_copy(update={"gradient_checkpointing": False, "bf16": False})
    env = prepare_multi_gpu_env(validated(build_launch_command("verifier", no_checkpointing, [])))
    assert env["FSDP_ACTIVATION_CHECKPOINTING"] == "false" and env["ACCELERATE_MIXED_PRECISION"] == "no"


def test_single_gpu_command_has_no_config_file():
    command = build_launch_command("finetune", ComputeConfig(num_gpus=1), [])
    assert command == ["accelerate", "launch", "--num_processes", "1", "--mixed_precision", "no", "-m",
                       "mucode.tasks.finetune"]


def test_cpu_ranks_command_is_ddp_through_torchrun():
    from accelerate.utils.launch import prepare_multi_gpu_env

    command = build_launch_command("finetune", ComputeConfig(), ["--sft", "x.parquet"], cpu_processes=2, port=29123)
    assert command == ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--mixed_precision", "no",
                       "--main_process_port", "29123", "-m", "mucode.tasks.finetune", "--sft", "x.parquet"]
    args = validated(command)
    assert args.multi_gpu and not (args.cpu or args.use_fsdp or args.use_deepspeed)  # torchrun, not one process
    env = prepare_multi_gpu_env(args)
    assert args.master_port == "29123" and env["ACCELERATE_MIXED_PRECISION"] == "no"


@pytest.mark.parametrize("compute", [FSDP.model_copy(update={"num_gpus": 0}), ZERO3.model_copy(update={"num_gpus": 0}),
                                     ComputeConfig(num_gpus=2)])
def test_cpu_ranks_refuse_what_needs_gpus(compute):
    with pytest.raises(TrainingLaunchError, match="CPU ranks need 2\\+ processes, num_gpus=0 and distributed=none"):
        build_launch_command("verifier", compute, [], cpu_processes=2)
    with pytest.raises(TrainingLaunchError, match="cpu_processes=1"):
        build_launch_command("verifier", ComputeConfig(), [], cpu_processes=1)


def test_no_gpu_means_no_launch():
    with pytest.raises(TrainingLaunchError, match="needs compute.num_gpus >= 1"):
        build_launch_command("finetune", ComputeConfig(), [])
    with pytest.raises(TrainingLaunchError, match="no accelerate config for distributed='none'"):
        accelerate_config_path("none")


@pytest.mark.parametrize("name", ["deepspeed-zero3.yaml", "fsdp.yaml"])
def test_config_files_are_for_four_gpus_in_bf16(name):
    from accelerate.commands.config.config_args import load_config_from_file

    raw = yaml.safe_load((ACCELERATE_CONFIG_DIR / name).read_text())
    assert raw["num_processes"] == 4 and raw["mixed_precision"] == "bf16" and raw["num_machines"] == 1
    if name.startswith("deepspeed"):
        assert raw["distributed_type"] == "DEEPSPEED" and raw["deepspeed_config"]["zero_stage"] == 3
        assert raw["deepspeed_config"]["zero3_save_16bit_model"] is True
    else:
        assert raw["distributed_type"] == "FSDP" and raw["fsdp_config"]["fsdp_version"] == 2
        assert raw["fsdp_config"]["fsdp_reshard_after_forward"] is True  # FSDP2's full shard
        assert raw["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    loaded = load_config_from_file(str(ACCELERATE_CONFIG_DIR / name))  # rejects unknown keys
    assert loaded.num_processes == 4


def test_per_device_batch_divides_the_configured_batch():
    assert per_device_batch_size(32, ZERO3, accumulation_steps=2) == 4
    assert per_device_batch_size(16, ComputeConfig()) == 16
    with pytest.raises(TrainingLaunchError, match="batch_size 6 is not divisible by .* = 4"):
        per_device_batch_size(6, ZERO3)


def test_run_training_stays_in_process_without_gpus(monkeypatch):
    def no_subprocess(*args, **kwargs):
        raise AssertionError("launched a subprocess on CPU")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    assert run_training("finetune", ComputeConfig(), lambda: {"ran": "here"}, {}, []) == {"ran": "here"}


def test_run_training_launches_the_entry_point_with_its_frames(monkeypatch):
    seen = {}

    def fake_accelerate(command, check):
        seen["command"] = command
        args = command[command.index("-m") + 2:]
        seen["frame"] = pl.read_parquet(args[args.index("--sft") + 1])
        Path(args[args.index("--metrics") + 1]).write_text(json.dumps({"loss_log": [], "from": "rank0"}))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(subprocess, "run", fake_accelerate)
    frame = pl.DataFrame({"prompt_messages": ["[]"], "completion": ["x"]})
    metrics = run_training("finetune", ZERO3, lambda: pytest.fail("trained in-process"), {"sft": frame},
                           ["--base", "m", "--out", "o"])
    assert metrics == {"loss_log": [], "from": "rank0"}
    assert Path(seen["command"][0]).name == "accelerate" and seen["command"][1] == "launch"
    assert seen["command"][seen["command"].index("-m") + 1] == "mucode.tasks.finetune"
    assert seen["frame"].equals(frame)


def test_failed_launch_is_one_line(monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda command, check: subprocess.CompletedProcess(command, 3))
    with pytest.raises(TrainingLaunchError, match="finetune stage exited with code 3"):
        run_training("finetune", ZERO3, dict, {}, [])


def test_trainer_image_copies_what_exists():
    dockerfile = (REPO_ROOT / "containers" / "trainer.Dockerfile").read_text()
    assert "ARG BASE_IMAGE=" in dockerfile and "FROM ${BASE_IMAGE}" in dockerfile
    sources = [part for line in dockerfile.splitlines() if line.startswith("COPY") for part in line.split()[1:-1]]
    assert "containers/accelerate" in sources
    assert all((REPO_ROOT / source).exists() for source in sources)


# ---------------------------------------------------------------- the entry points on CPU (slow)

def run_entry_point(stage, args):
    started = subprocess.run([sys.executable, "-m", f"mucode.tasks.{stage}", *args], capture_output=True,
                             text=True, cwd=REPO_ROOT, timeout=600)
    assert started.returncode == 0, started.stderr[-3000:]


@pytest.mark.slow
def test_finetune_entry_point_runs_on_cpu(tiny_model, tmp_path):
    rows = [{"prompt_messages": json.dumps([{"role": "user", "content": f"task {i}"}]),
             "completion": f"```python\nx = {i}\n```"} for i in range(4)]
    pl.DataFrame(rows).write_parquet(tmp_path / "sft.parquet")
    cfg = FinetuneConfig(learning_rate=1e-3, epochs=1, batch_size=2, max_length=64)
    sections = {"finetune": cfg.model_dump(), "compute": ComputeConfig().model_dump()}
    run_entry_point("finetune", ["--config-json", json.dumps(sections), "--sft", str(tmp_path / "sft.parquet"),
                                 "--base", tiny_model, "--out", str(tmp_path / "model"), "--seed", "1",
                                 "--metrics", str(tmp_path / "metrics.json")])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["examples"] == 4 and len(metrics["loss_log"]) == 2
    assert (tmp_path / "model" / "model.safetensors").is_file()


@pytest.mark.slow
def test_verifier_entry_point_runs_on_cpu(tiny_model, tmp_path):
    aggregated, problems = verifier_frames(2)
    problems.write_parquet(tmp_path / "problems.parquet")
    aggregated.write_parquet(tmp_path / "aggregated.parquet")
    cfg = VerifierConfig(pairs_per_problem=1, learning_rate=1e-3, epochs=1, batch_size=1, max_length=128,
                         heldout_fraction=0.5)
    sections = {"verifier": cfg.model_dump(), "compute": ComputeConfig().model_dump()}
    run_entry_point("verifier", ["--config-json", json.dumps(sections), "--aggregated",
                                 str(tmp_path / "aggregated.parquet"), "--problems", str(tmp_path / "problems.parquet"),
                                 "--base", tiny_model, "--out", str(tmp_path / "verifier"),
                                 "--metrics", str(tmp_path / "metrics.json")])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["train_pairs"] == 1 and metrics["heldout_pairs"] == 1 and len(metrics["loss_log"]) == 1
    assert (tmp_path / "verifier" / "config.json").is_file()


# ---------------------------------------------------------------- several CPU ranks (DDP over gloo, slow)
# Two torchrun ranks on CPU run the same entry points the GPU launch runs. The reference is
# the same stage in one process with the same global batch and seed. The fp32 all-reduce
# only changes the summation order: losses agree to ~1e-6 relative. Adam divides each update
# by the gradient's running RMS, so for an element whose gradient is almost zero (a rare
# token's embedding) that rounding becomes a small fraction of a step: the weights must agree
# within 5% of one step's largest size, the learning rate (measured: 3e-8 fine-tune, 2.5e-5
# verifier embeddings, at lr 1e-3).

CPU_RANKS = 2
LEARNING_RATE = 1e-3
WEIGHT_ATOL = 0.05 * LEARNING_RATE
LOSS_RTOL = 1e-5
PROBE_DIR = Path(__file__).resolve().parent / "rank_probe"


def sft_rows(count):
    return pl.DataFrame([{"prompt_messages": json.dumps([{"role": "user", "content": f"task {i}"}]),
                          "completion": f"```python\nx = {i}{'0' * i}\n```"} for i in range(count)])


def log_rank_writes(monkeypatch, log_dir):
    """Make every launched rank log the files it writes (tests/rank_probe/sitecustomize.py)."""
    log_dir.mkdir()
    monkeypatch.setenv("PYTHONPATH", str(PROBE_DIR))
    monkeypatch.setenv("MUCODE_WRITE_LOG", str(log_dir))
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")


def writes_under(log_dir, rank, *roots):
    log = log_dir / f"rank-{rank}.log"
    paths = [line.split(" ", 1)[1] for line in log.read_text().splitlines()] if log.is_file() else []
    return sorted({p for p in paths if any(p.startswith(str(root)) or p.endswith(str(root)) for root in roots)})


def assert_same_training(single, ranks, single_dir, ranks_dir, base_dir):
    from safetensors.torch import load_file

    assert [e["step"] for e in ranks["loss_log"]] == [e["step"] for e in single["loss_log"]]
    assert [e["loss"] for e in ranks["loss_log"]] == pytest.approx([e["loss"] for e in single["loss_log"]],
                                                                   rel=LOSS_RTOL)
    one, two = load_file(single_dir / "model.safetensors"), load_file(ranks_dir / "model.safetensors")
    base = load_file(Path(base_dir) / "model.safetensors")
    assert one.keys() == two.keys()
    assert max((one[k] - two[k]).abs().max().item() for k in one) < WEIGHT_ATOL
    # Training moved the weights far beyond the tolerance, so agreeing within it means something.
    assert max((one[k] - base[k]).abs().max().item() for k in one.keys() & base.keys()) > 10 * WEIGHT_ATOL


def assert_only_rank0_wrote(log_dir, out_dir):
    assert writes_under(log_dir, 1, out_dir, "metrics.json") == []
    written = writes_under(log_dir, 0, out_dir, "metrics.json")
    assert str(out_dir / "config.json") in written and any(p.endswith("metrics.json") for p in written)


@pytest.mark.slow
def test_finetune_on_two_cpu_ranks_matches_one_process(tiny_model, tmp_path, monkeypatch):
    from mucode.tasks.finetune import run_sft
    from mucode.training import launch_options

    sft, compute = sft_rows(8), ComputeConfig()
    cfg = FinetuneConfig(learning_rate=LEARNING_RATE, epochs=1, batch_size=4, max_length=64)
    single = run_training("finetune", compute, lambda: run_sft(cfg, compute, tiny_model, sft, str(tmp_path / "one"), 1),
                          {}, [])
    log_rank_writes(monkeypatch, tmp_path / "writes")
    ranks = run_training("finetune", compute, lambda: pytest.fail("trained in-process"), {"sft": sft},
                         launch_options("finetune", cfg, compute, tiny_model, str(tmp_path / "two"), 1),
                         cpu_processes=CPU_RANKS)
    # 8 examples at a global batch of 4: two steps. Unsharded data or a per-rank batch of 4
    # would take four or one, and would not reproduce the single-process weights.
    assert [e["step"] for e in single["loss_log"]] == [1, 2]
    assert_same_training(single, ranks, tmp_path / "one", tmp_path / "two", tiny_model)
    assert_only_rank0_wrote(tmp_path / "writes", tmp_path / "two")


def verifier_frames(problem_count):
    """One passing and one failing final answer per problem: one BT pair each."""
    ids = [f"t{i}" for i in range(problem_count)]
    problems = pl.DataFrame({"task_id": ids, "dataset": ["mbpp"] * problem_count, "prompt": [f"do {t}" for t in ids],
                             "public_tests": ["assert f()"] * problem_count})
    aggregated = pl.DataFrame({"task_id": [t for t in ids for _ in range(2)],
                               "response": [f"{kind} {t}" for t in ids for kind in ("good", "bad")],
                               "final": [True] * 2 * problem_count, "oracle_passed": [True, False] * problem_count})
    return aggregated, problems


VERIFIER_ON_RANKS = VerifierConfig(pairs_per_problem=1, learning_rate=LEARNING_RATE, epochs=1, batch_size=2,
                                   max_length=64, heldout_fraction=0.0)


@pytest.mark.slow
def test_verifier_on_two_cpu_ranks_matches_one_process(tiny_model, tmp_path, monkeypatch):
    from mucode.tasks.verifier import fit_verifier
    from mucode.training import launch_options

    aggregated, problems = verifier_frames(4)
    cfg, compute = VERIFIER_ON_RANKS, ComputeConfig()
    single = run_training("verifier", compute, lambda: fit_verifier(cfg, compute, tiny_model, aggregated, problems,
                                                                    str(tmp_path / "one"), 3), {}, [])
    log_rank_writes(monkeypatch, tmp_path / "writes")
    ranks = run_training("verifier", compute, lambda: pytest.fail("trained in-process"),
                         {"aggregated": aggregated, "problems": problems},
                         launch_options("verifier", cfg, compute, tiny_model, str(tmp_path / "two"), 3),
                         cpu_processes=CPU_RANKS)
    # 4 pairs at a global batch of 2: one pair per rank per step, two steps.
    assert single["train_pairs"] == ranks["train_pairs"] == 4
    assert [e["step"] for e in single["loss_log"]] == [1, 2]
    assert_same_training(single, ranks, tmp_path / "one", tmp_path / "two", tiny_model)
    assert_only_rank0_wrote(tmp_path / "writes", tmp_path / "two")


@pytest.mark.slow
def test_an_odd_number_of_pairs_does_not_hang_the_ranks(tiny_model, tmp_path, monkeypatch):
    """3 pairs on 2 ranks: accelerate gives both ranks the same number of batches (the last
    one topped up with the first pair again), so both take 2 steps and neither waits forever."""
    from mucode.training import launch_options

    aggregated, problems = verifier_frames(3)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    ranks = run_training("verifier", ComputeConfig(), lambda: pytest.fail("trained in-process"),
                         {"aggregated": aggregated, "problems": problems},
                         launch_options("verifier", VERIFIER_ON_RANKS, ComputeConfig(), tiny_model,
                                        str(tmp_path / "two"), 3), cpu_processes=CPU_RANKS)
    assert ranks["train_pairs"] == 3 and [e["step"] for e in ranks["loss_log"]] == [1, 2]


# The stage as the flow runs it (its resumable out_dir, then an atomic put_dir), on CPU ranks.
KILL_DRIVER = """
import sys
import polars as pl
from mucode.artifacts import ArtifactStore
from mucode.config import ComputeConfig, FinetuneConfig
from mucode.training import TrainingLaunchError, launch_options, resumable_out_dir, run_training
cfg, store = FinetuneConfig.model_validate_json(sys.argv[1]), ArtifactStore(sys.argv[2])
try:
    with resumable_out_dir(store, "finetune", "kill-test", []) as out_dir:
        options = launch_options("finetune", cfg, ComputeConfig(), sys.argv[4], out_dir, 0)
        metrics = run_training("finetune", ComputeConfig(), None, {"sft": pl.read_parquet(sys.argv[3])}, options,
                               cpu_processes=2)
        store.put_dir(out_dir, stage="finetune", extra={"metrics": metrics})
except TrainingLaunchError as error:
    sys.exit(f"error: {error}")
"""


def processes_with_env(entry):
    """Pids whose environment holds `entry` (e.g. 'MUCODE_KILL_TEST=<id>')."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and entry.encode() in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_a_killed_rank_fails_the_stage_in_one_line_and_leaves_no_artifact(tiny_model, tmp_path):
    import os
    import signal
    import time
    import uuid

    marker = f"MUCODE_KILL_TEST={uuid.uuid4().hex}"
    sft_rows(8).write_parquet(tmp_path / "sft.parquet")
    cfg = FinetuneConfig(learning_rate=LEARNING_RATE, epochs=200, batch_size=2, max_length=64)  # minutes of steps
    env = {**os.environ, marker.split("=")[0]: marker.split("=")[1], "PYTHONUNBUFFERED": "1",
           "OMP_WAIT_POLICY": "PASSIVE"}
    driver = subprocess.Popen([sys.executable, "-c", KILL_DRIVER, cfg.model_dump_json(), str(tmp_path / "store"),
                               str(tmp_path / "sft.parquet"), tiny_model], cwd=REPO_ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for line in driver.stdout:  # rank 0 prints a loss dict per optimizer step
            if "'loss'" in line:
                break
        rank1 = [pid for pid in processes_with_env(marker) if pid in processes_with_env("RANK=1")]
        assert len(rank1) == 1, f"rank 1 not found among {processes_with_env(marker)}"
        os.kill(rank1[0], signal.SIGKILL)
        killed_at = time.monotonic()
        _, stderr = driver.communicate(timeout=120)
        seconds = time.monotonic() - killed_at
    finally:
        driver.kill()
    print(f"the stage failed {seconds:.1f} s after rank 1 was killed")
    assert driver.returncode == 1
    assert stderr.strip().splitlines()[-1] == ("error: accelerate launch of the finetune stage exited with code 1: "
                                               "see its output above")
    assert processes_with_env(marker) == []  # no rank left behind
    # Nothing half-written: no finetune artifact or manifest; the out_dir is kept for a resume.
    assert list((tmp_path / "store" / "artifacts").iterdir()) == []
    assert [folder.name[:9] for folder in (tmp_path / "store" / "training").iterdir()] == ["finetune-"]
