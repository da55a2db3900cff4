"""Shared by the sandbox tests: when a Docker test may run, skip, or must fail."""

import os

import pytest

from mucode.sandbox import docker_available


def require_docker() -> None:
    if docker_available():
        return
    if os.environ.get("CI") == "true":
        pytest.fail("CI=true but no Docker engine with the sandbox image: run bash containers/setup-docker.sh")
    pytest.skip("no Docker engine with the sandbox image here (bash containers/setup-docker.sh sets one up)")
