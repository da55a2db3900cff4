"""How the training stages run: in this process on CPU, or under `accelerate launch` on GPUs.

The verifier and fine-tuning stages each have a module entry point
(`python -m mucode.tasks.<stage> --config-json ... --out DIR ...`). With no GPU the stage
trains in the calling process in fp32; with GPUs `run_training` writes the input frames to
a temporary directory and starts the same entry point through `accelerate launch` with the
repository's DeepSpeed ZeRO-3 or FSDP config (containers/accelerate/), then reads back the
metrics the main process wrote. `cpu_processes` launches the same entry point on several
CPU ranks (DDP over gloo), which is how the multi-process paths are tested without GPUs
(docs/architecture.md, "Multi-process training"). This module also maps the shared part of
`ComputeConfig` onto transformers' `TrainingArguments` keywords, and wraps a stage's model in
LoRA adapters (`method: lora`) that are merged back before saving, so every stage outputs a
plain model directory. A stage trains into `resumable_out_dir`, a folder named after what
decides its result, and `train_resuming` checkpoints there every `compute.checkpoint_every_s`:
a killed stage, run again, resumes from its last checkpoint (the Trainer restores the weights,
optimizer, schedule, RNG and data position). It does not build datasets or load models.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import polars as pl

from mucode.config import ComputeConfig, LoraSettings, TrainingMethod

if TYPE_CHECKING:
    from mucode.artifacts import ArtifactStore

Stage = Literal["verifier", "finetune"]
ADAPTER_SUBDIR = "lora-adapter"  # written, merged and removed again inside the stage's out_dir
TRAINING_DIR = "training"  # under the experiment directory: out_dirs of unfinished training stages
CHECKPOINT_PREFIX = "checkpoint-"  # the Trainer's name for a checkpoint folder, before the step
SAVE_SHARE = 0.1  # at most this share of the training time goes to saving checkpoints
REPO_ROOT = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIG_DIR = REPO_ROOT / "containers" / "accelerate"
ACCELERATE_CONFIG_FILES = {"deepspeed-zero3": "deepspeed-zero3.yaml", "fsdp": "fsdp.yaml"}


class TrainingLaunchError(RuntimeError):
    """A launched training run failed or the launch is misconfigured; the message is one line."""


def accelerate_config_path(distributed: str) -> Path:
    """The accelerate config file of a `ComputeConfig.distributed` strategy."""
    if distributed not in ACCELERATE_CONFIG_FILES:
        raise TrainingLaunchError(
            f"no accelerate config for distributed={distributed!r}: use one of {sorted(ACCELERATE_CONFIG_FILES)}"
        )
    path = ACCELERATE_CONFIG_DIR / ACCELERATE_CONFIG_FILES[distributed]
    if not path.is_file():
        raise TrainingLaunchError(f"accelerate config {path} not found: install mucode editable from a repository "
                                  "checkout (pip install -e .), as containers/trainer.Dockerfile does")
    return path


def build_launch_command(stage: Stage, compute: ComputeConfig, args: Sequence[str], cpu_processes: int = 0,
                         port: int | None = None) -> list[str]:
    """`accelerate launch ... -m mucode.tasks.<stage> <args>` for `compute.num_gpus` processes.

    `cpu_processes` > 1 launches that many CPU ranks instead (DDP over gloo, fp32): how the
    multi-process code paths are tested without GPUs. `accelerate launch --cpu` would start
    one process unless MPI is installed, so the ranks go through torchrun (`--multi_gpu`)
    and train on CPU because `compute.num_gpus` is 0. `port` is the rendezvous port (0: any free one).
    """
    if cpu_processes:
        check_cpu_launch(compute, cpu_processes)
        command = ["accelerate", "launch", "--multi_gpu", "--num_processes", str(cpu_processes),
                   "--mixed_precision", "no"]
    else:
        if compute.num_gpus < 1:
            raise TrainingLaunchError("accelerate launch needs compute.num_gpus >= 1: on CPU the stage runs in-process")
        command = ["accelerate", "launch"]
        if compute.distributed != "none":
            command += ["--config_file", str(accelerate_config_path(compute.distributed))]
        command += ["--num_processes", str(compute.num_gpus), "--mixed_precision", "bf16" if compute.bf16 else "no"]
        if compute.distributed == "fsdp":
            # FSDP checkpoints activations itself; the Trainer's own flag would all-gather twice.
            command += ["--fsdp_activation_checkpointing", "true" if compute.gradient_checkpointing else "false"]
    if port is not None:
        command += ["--main_process_port", str(port)]
    return [*command, "-m", f"mucode.tasks.{stage}", *args]


def check_cpu_launch(compute: ComputeConfig, cpu_processes: int) -> None:
    """CPU ranks train plain DDP: ZeRO-3 needs GPUs, and accelerate turns FSDP on only for
    accelerator devices (on CPU ranks it would silently train DDP instead)."""
    if cpu_processes < 2 or compute.num_gpus or compute.distributed != "none":
        raise TrainingLaunchError(
            f"cpu_processes={cpu_processes} with num_gpus={compute.num_gpus}, distributed={compute.distributed!r}: "
            "CPU ranks need 2+ processes, num_gpus=0 and distributed=none (ZeRO-3 and FSDP need GPUs)"
        )


def launch_options(section: str, settings: Any, compute: ComputeConfig, base: str, out_dir: str,
                   seed: int) -> list[str]:
    """The entry-point arguments of a training stage (its frames and `--metrics` are added at launch)."""
    return ["--config-json", json.dumps({section: settings.model_dump(), "compute": compute.model_dump()}),
            "--base", base, "--out", out_dir, "--seed", str(seed)]


def run_training(stage: Stage, compute: ComputeConfig, train_here: Callable[[], dict[str, Any]],
                 frames: dict[str, pl.DataFrame], options: Sequence[str], cpu_processes: int = 0) -> dict[str, Any]:
    """Train in this process when there is no GPU, else launch the stage's entry point.

    `frames` become `--<name> file.parquet` arguments of the launched entry point, `options`
    are passed as they are; the entry point writes its metrics to `--metrics`.
    `cpu_processes` > 1 launches that many CPU ranks instead (see `build_launch_command`).
    A rank that dies ends the launch: torchrun stops the other ranks and exits non-zero.
    """
    if compute.num_gpus == 0 and not cpu_processes:
        return train_here()
    with tempfile.TemporaryDirectory(prefix=f"mucode-{stage}-") as scratch:
        args = list(options)
        for name, frame in frames.items():
            path = Path(scratch) / f"{name}.parquet"
            frame.write_parquet(path)
            args += [f"--{name}", str(path)]
        metrics_path = Path(scratch) / "metrics.json"
        command = build_launch_command(stage, compute, [*args, "--metrics", str(metrics_path)], cpu_processes,
                                       port=0 if cpu_processes else None)  # 0: accelerate picks a free port
        completed = subprocess.run([accelerate_executable(), *command[1:]], check=False)
        if completed.returncode != 0:
            raise TrainingLaunchError(
                f"accelerate launch of the {stage} stage exited with code {completed.returncode}: see its output above"
            )
        return json.loads(metrics_path.read_text())


def accelerate_executable() -> str:
    """The `accelerate` script of this interpreter's environment, else the one on PATH."""
    beside_python = Path(sys.executable).parent / "accelerate"
    return str(beside_python) if beside_python.is_file() else (shutil.which("accelerate") or "accelerate")


def world_size(compute: ComputeConfig) -> int:
    """The number of training processes: the launched world inside a rank, else the GPUs to launch."""
    return int(os.environ.get("WORLD_SIZE", max(1, compute.num_gpus)))


def per_device_batch_size(global_batch: int, compute: ComputeConfig, accumulation_steps: int = 1) -> int:
    """The per-process batch so that processes × accumulation × it = the configured batch."""
    shards = world_size(compute) * accumulation_steps
    if global_batch % shards:
        raise TrainingLaunchError(
            f"batch_size {global_batch} is not divisible by num_gpus × gradient_accumulation_steps = {shards}"
        )
    return global_batch // shards


def trainer_arguments(compute: ComputeConfig, out_dir: str, seed: int, *, learning_rate: float, epochs: float,
                      global_batch: int, accumulation_steps: int = 1) -> dict[str, Any]:
    """Keyword arguments shared by every `TrainingArguments` subclass the stages use.

    AdamW with a linear schedule (the paper's), a loss logged every step, no checkpoints
    unless `train_resuming` asks for one (then only the newest is kept).
    fp32 on CPU; bf16 and activation checkpointing on GPUs as `compute` says.
    """
    on_cpu = compute.num_gpus == 0
    return {
        "output_dir": out_dir,
        "learning_rate": learning_rate,
        "num_train_epochs": epochs,
        "per_device_train_batch_size": per_device_batch_size(global_batch, compute, accumulation_steps),
        "gradient_accumulation_steps": accumulation_steps,
        "lr_scheduler_type": "linear",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "optim": "adamw_torch",
        "logging_strategy": "steps",
        "logging_steps": 1,
        "save_strategy": "no",
        "save_total_limit": 1,
        "report_to": "none",
        "seed": seed,
        "data_seed": seed,
        "use_cpu": on_cpu,
        "bf16": compute.bf16 and not on_cpu,
        "fp16": False,
        "activation_checkpointing": compute.gradient_checkpointing and compute.distributed != "fsdp" and not on_cpu,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }


def trainable_model(model: Any, method: TrainingMethod, lora: LoraSettings, top_layers: int | None,
                    task_type: Literal["CAUSAL_LM", "SEQ_CLS"]):
    """The model as the trainer should see it: which weights train, and how.

    method full: every weight trains, or with `top_layers` = k only the top k decoder layers,
    the final norm and a classification head. method lora: a peft model whose LoRA adapters
    (in every layer, or in the top k only) train; for SEQ_CLS peft also trains and saves the
    new score head. With `top_layers` nothing below the top k layers needs a gradient, so
    autograd records none of them and backward stops at layer L-k: compute, not just memory.
    """
    layers = decoder_layers(model)
    if top_layers is not None and top_layers > len(layers):
        raise TrainingLaunchError(f"train_top_layers={top_layers} but the model has {len(layers)} decoder layers: "
                                  f"use at most {len(layers)}, or null for all")
    top = range(len(layers) - (top_layers or len(layers)), len(layers))
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        targets = lora.target_modules
        if top_layers is not None and targets == "all-linear":  # peft wants names when layers are chosen
            targets = linear_module_names(layers[0])
        config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                            task_type=task_type, layers_to_transform=list(top) if top_layers is not None else None)
        return get_peft_model(model, config)
    if top_layers is not None:
        model.requires_grad_(False)
        for index in top:
            layers[index].requires_grad_(True)
        for head in (model.base_model.norm, getattr(model, "score", None)):
            if head is not None:
                head.requires_grad_(True)
    return model


def linear_module_names(block: Any) -> list[str]:
    """The names of a transformer block's linear layers (q_proj, ..., down_proj): "all-linear" of one block."""
    import torch

    return sorted({name.rsplit(".", 1)[-1] for name, module in block.named_modules()
                   if isinstance(module, torch.nn.Linear)})


def decoder_layers(model: Any) -> Any:
    """The decoder's list of transformer blocks (`model.base_model.layers` in Llama/Qwen-style models)."""
    layers = getattr(model.base_model, "layers", None)
    if layers is None:
        raise TrainingLaunchError(f"{type(model).__name__} has no base_model.layers: train_top_layers needs a "
                                  "Llama/Qwen-style decoder; leave it null")
    return layers


def save_trained_model(trainer: Any, method: TrainingMethod, out_dir: str) -> None:
    """Save what the trainer trained: the whole model, or under LoRA only the adapter (merged later)."""
    trainer.save_model(str(Path(out_dir) / ADAPTER_SUBDIR) if method == "lora" else out_dir)


def merge_saved_adapter(load_base: Callable[[], Any], out_dir: str) -> None:
    """Fold the adapter saved in out_dir/ADAPTER_SUBDIR into a fresh base model; save it plain in out_dir.

    Runs after the trainer is freed, on a full (unsharded) copy of the base, so it works the
    same after a DeepSpeed/FSDP run. The adapter directory is removed afterwards.
    """
    from peft import PeftModel

    adapter_dir = Path(out_dir) / ADAPTER_SUBDIR
    merged = PeftModel.from_pretrained(load_base(), str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(out_dir)
    del merged
    shutil.rmtree(adapter_dir)


def loss_log(log_history: list[dict[str, Any]]) -> list[dict[str, float]]:
    """The training-loss curve from a Trainer's `state.log_history`: [{step, epoch, loss}]."""
    return [
        {"step": int(entry["step"]), "epoch": float(entry.get("epoch", 0.0)), "loss": float(entry["loss"])}
        for entry in log_history
        if "loss" in entry
    ]


def drop_trainer_state(out_dir: str) -> None:
    """Remove what the Trainer adds beside the model: a pickled TrainingArguments and the checkpoints."""
    Path(out_dir, "training_args.bin").unlink(missing_ok=True)
    for checkpoint in Path(out_dir).glob(f"{CHECKPOINT_PREFIX}*"):
        shutil.rmtree(checkpoint, ignore_errors=True)


@contextlib.contextmanager
def resumable_out_dir(store: ArtifactStore, stage: Stage, config_hash: str, inputs: Sequence[str]) -> Iterator[str]:
    """The out_dir of a training stage, which holds its checkpoints: ROOT/training/<stage>-<key>,
    the key a digest of what decides the result (the config sections it reads, its input
    hashes and its code), so the same stage run again finds the checkpoints of a killed run
    and any change starts afresh. Kept when the block fails (to resume), removed when it ends."""
    from mucode.code_digest import stage_code
    from mucode.hashing import json_digest

    key = json_digest([config_hash, list(inputs), stage_code(f"mucode.tasks.{stage}").digest])[:16]
    folder = store.local_folder(TRAINING_DIR, f"{stage}-{key}")
    folder.mkdir(parents=True, exist_ok=True)
    yield str(folder)
    shutil.rmtree(folder, ignore_errors=True)


def last_checkpoint(out_dir: str) -> str | None:
    """The newest finished checkpoint in out_dir, or None. The Trainer writes trainer_state.json
    last, so a folder whose state does not parse was cut off mid-save and is skipped."""
    def step(folder: Path) -> int:
        suffix = folder.name[len(CHECKPOINT_PREFIX):]
        return int(suffix) if suffix.isdigit() else -1

    for folder in sorted(Path(out_dir).glob(f"{CHECKPOINT_PREFIX}*"), key=step, reverse=True):
        try:
            json.loads((folder / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        return str(folder)
    return None


def train_resuming(trainer: Any, checkpoint_every_s: float | None) -> Any:
    """`trainer.train()`, resumed from the newest checkpoint in its output_dir if one is there,
    saving one every `checkpoint_every_s` seconds (None: never); returns its TrainOutput."""
    if checkpoint_every_s is not None:
        trainer.add_callback(timed_checkpoints(checkpoint_every_s))
    resume_from = last_checkpoint(trainer.args.output_dir)
    if resume_from is not None and is_main_process():
        print(f"resuming training from {resume_from}", file=sys.stderr, flush=True)
    return trainer.train(resume_from_checkpoint=resume_from)


def timed_checkpoints(every_s: float) -> Any:
    """A TrainerCallback that asks for a checkpoint once `every_s` seconds have passed since the
    start or the last save, and at least 1/SAVE_SHARE times as long as the last save took. Every
    rank takes rank 0's decision (a collective save must not be asked of one rank alone)."""
    from transformers import TrainerCallback

    class TimedCheckpoints(TrainerCallback):
        def __init__(self) -> None:
            self.last_save = time.monotonic()
            self.save_took = 0.0
            self.asked_at: float | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.last_save = time.monotonic()  # count training time, not loading
            return control

        def on_step_end(self, args, state, control, **kwargs):
            due = time.monotonic() - self.last_save >= max(every_s, self.save_took / SAVE_SHARE)
            if state.global_step < state.max_steps and rank0_decides(due, args.device):
                control.should_save = True
                self.asked_at = time.monotonic()
            return control

        def on_save(self, args, state, control, **kwargs):
            self.last_save = time.monotonic()
            if self.asked_at is not None:
                self.save_took, self.asked_at = self.last_save - self.asked_at, None
            return control

    return TimedCheckpoints()


def rank0_decides(flag: bool, device: Any) -> bool:
    """`flag` as rank 0 sees it, on every rank (itself when there is one process)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    decision = torch.tensor([int(flag)], device=device)
    dist.broadcast(decision, src=0)
    return bool(decision.item())


def release_memory() -> None:
    """Free what a finished trainer held before the main process loads the saved model again."""
    import torch

    from mucode.freed_memory import return_freed_memory

    return_freed_memory()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def is_main_process() -> bool:
    """Rank 0 under `accelerate launch` / torchrun, always true in a plain process."""
    return int(os.environ.get("RANK", "0")) == 0


def entry_point_parser(stage: Stage) -> argparse.ArgumentParser:
    """The arguments every stage entry point takes; the stage adds its input frames."""
    parser = argparse.ArgumentParser(prog=f"python -m mucode.tasks.{stage}",
                                     description=f"Train the {stage} in this process (what accelerate launches).")
    parser.add_argument("--config-json", required=True, help="JSON of the stage's config sections and 'compute'")
    parser.add_argument("--base", required=True, help="base model: bundled:<name>, a directory or a hub id")
    parser.add_argument("--out", required=True, help="directory the trained model is written to")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--metrics", default=None, help="where the main process writes the metrics JSON")
    return parser


def write_metrics(path: str | None, metrics: dict[str, Any]) -> None:
    """Write the metrics JSON (main process only; other ranks hold the same numbers)."""
    if path is not None and is_main_process():
        Path(path).write_text(json.dumps(metrics, indent=2, allow_nan=True) + "\n")
