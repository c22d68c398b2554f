"""Shared fixtures: devices, CPU backends, and the op table for parity tests."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors (set before Triton is imported).
    os.environ.setdefault("TRITON_INTERPRET", "1")

from dropkit import kernels


def _devices() -> list:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append(pytest.param("cuda", marks=pytest.mark.gpu))
    return devices


@pytest.fixture(params=_devices())
def device(request) -> str:
    return request.param


@pytest.fixture(params=["numba", "reference"])
def backend(request):
    """Run the test once on the compiled CPU kernels and once on the torch-ops reference."""
    with kernels.use_backend(request.param):
        yield request.param


# --- slow runs (issue 9): ``pytest --runslow`` or DROPKIT_SLOW=1 runs tests marked ``slow`` ------------------------


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds (run with --runslow or DROPKIT_SLOW=1)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow") or os.environ.get("DROPKIT_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow or DROPKIT_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
