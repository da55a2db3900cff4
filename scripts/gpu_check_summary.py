"""Print what scripts/gpu-check.sh measured: each stage's wall time and peak GPU memory, and
the pass rates of every evaluation, read from the run's artifacts.

Inputs: the experiment directory (its timings.jsonl and evaluate-* manifests) and the CSV
`nvidia-smi --query-gpu=timestamp,index,memory.used --format=csv,noheader,nounits` wrote
(timestamps in UTC). A stage's peak is the largest memory.used of any one GPU sampled
between its start (finish − wall time) and its finish. It does not run anything.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

PASS_RATES = ("pass@1", "bon@1", "bon@2", "single_turn_pass@1")


def memory_samples(csv_path: Path) -> list[tuple[float, int, float]]:
    """(unix time, GPU index, MiB used) per line of the nvidia-smi CSV; malformed lines are skipped."""
    samples = []
    for line in csv_path.read_text().splitlines():
        parts = [part.strip() for part in line.split(",")]
        try:
            stamp = dt.datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").replace(tzinfo=dt.timezone.utc)
            samples.append((stamp.timestamp(), int(parts[1]), float(parts[2])))
        except (IndexError, ValueError):
            continue
    return samples


def stage_rows(root: Path, samples: list[tuple[float, int, float]]) -> list[dict]:
    """One row per computed stage: stage, run, wall_s, peak_mib (None without samples in its window)."""
    rows = []
    for line in (root / "timings.jsonl").read_text().splitlines():
        timing = json.loads(line)
        finished = dt.datetime.fromisoformat(timing["finished"]).timestamp()
        # `finished` has whole seconds: widen the window by one.
        inside = [mib for when, _, mib in samples if finished - timing["wall_s"] - 1 <= when <= finished + 1]
        rows.append({**timing, "peak_mib": max(inside) if inside else None})
    return rows


def evaluation_rows(root: Path) -> list[dict]:
    """method, dataset, n and the pass rates of every evaluation manifest."""
    rows = []
    for manifest_path in sorted((root / "artifacts").glob("evaluate-*/*.json")):
        manifest = json.loads(manifest_path.read_text())
        evaluation, metrics = manifest["evaluation"], manifest["metrics"]
        rows.append({"method": evaluation["method"], "dataset": evaluation["dataset"], "n": evaluation["n"],
                     **{name: metrics.get(name) for name in PASS_RATES}})
    return rows


def main(argv: list[str]) -> int:
    root, csv_path = Path(argv[0]), Path(argv[1])
    if not (root / "timings.jsonl").is_file():
        print(f"gpu-check: {root}/timings.jsonl not found: the run did not finish a stage", file=sys.stderr)
        return 1
    print(f"{'stage':<12} {'run':<28} {'wall s':>8} {'peak GPU MiB':>13}")
    for row in stage_rows(root, memory_samples(csv_path)):
        peak = "-" if row["peak_mib"] is None else f"{row['peak_mib']:.0f}"
        print(f"{row['stage']:<12} {row['run']:<28} {row['wall_s']:>8.1f} {peak:>13}")
    evaluations = evaluation_rows(root)
    if not evaluations:
        print("gpu-check: no evaluation manifest under artifacts/evaluate-*: the run did not evaluate", file=sys.stderr)
        return 1
    print(f"\n{'method':<10} {'dataset':<10} {'N':>3} " + " ".join(f"{name:>18}" for name in PASS_RATES))
    for row in evaluations:
        rates = " ".join("-".rjust(18) if row[name] is None else f"{100 * row[name]:>17.1f}%" for name in PASS_RATES)
        print(f"{row['method']:<10} {row['dataset']:<10} {row['n']:>3} {rates}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
