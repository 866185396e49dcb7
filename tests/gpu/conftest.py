"""GPU tests (`pytest -m gpu tests/gpu`, which scripts/test-gpu runs on a machine with an NVIDIA GPU;
the `gpu` marker is declared in pyproject.toml).

Where no GPU is visible every test here is skipped with a loud reason, and under CI=true too: CI
machines have no GPU and these tests are not required there (issue 14). They are marked before
any fixture runs, so a machine without a GPU starts no service for them.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "gpu: needs an NVIDIA GPU and a CUDA build of torch (scripts/test-gpu)"
    )


@functools.cache
def missing_gpu() -> str | None:
    """Why the GPU tests cannot run here; None when they can."""
    from worker import gpus

    if not gpus.list_gpus():
        return "no NVIDIA GPU visible (neither NVML nor nvidia-smi reports one)"
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} cannot use CUDA here (a CPU build? scripts/test-gpu installs a CUDA one)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = missing_gpu()
    if reason is None:
        return
    skip = pytest.mark.skip(
        reason=f"LOUD SKIP: {reason}; the GPU tests did not run (scripts/test-gpu runs them)"
    )
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(skip)


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only, a fresh file as tests/conftest.py's `empty_database` makes: these tests are about
    the GPU, not the database (the CPU suite covers both). Not imported from there, so the farm-free
    GPU tests run with `--confcutdir=tests/gpu` where the farm's packages are not installed."""
    return f"sqlite:///{tmp_path / 'master.db'}"
