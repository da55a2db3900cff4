"""Importing mucode makes torch's OpenMP threads passive, unless the caller chose a policy.

GNU OpenMP (torch's CPU runtime) prints its settings with OMP_DISPLAY_ENV=verbose; a
passive runtime does not spin (GOMP_SPINCOUNT 0), the default spins 300,000 times before
sleeping, and that spinning is what starved generation on a busy 2-core machine.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def openmp_spin_count(code: str, policy: str | None) -> str:
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    env["OMP_DISPLAY_ENV"] = "verbose"
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    done = subprocess.run([sys.executable, "-c", f"{code}; torch.ones(100_000).sum()"], env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    return next(line.split("=")[1].strip(" '") for line in done.stderr.splitlines() if "GOMP_SPINCOUNT" in line)


@pytest.mark.parametrize(("code", "policy", "spins"), [
    ("import mucode, torch", None, "0"),  # mucode first: passive
    ("import torch", None, "300000"),  # torch alone spins: what the import guards against
    ("import mucode, torch", "ACTIVE", "30000000000"),  # a policy the caller set is kept
])
def test_importing_mucode_before_torch_makes_openmp_passive(code, policy, spins):
    assert openmp_spin_count(code, policy) == spins
