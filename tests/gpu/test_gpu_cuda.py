"""CUDA works from this Python: arithmetic on the GPU gives the CPU's answer, memory comes and goes."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gpu
torch = pytest.importorskip("torch")


def test_a_matmul_on_the_gpu_gives_the_cpus_answer() -> None:
    a = torch.randn(512, 512, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    on_gpu = (a.cuda() @ a.cuda()).cpu()
    assert torch.allclose(on_gpu, a @ a)


def test_gpu_memory_is_allocated_and_freed() -> None:
    before = torch.cuda.memory_allocated()
    block = torch.ones(64 << 20, dtype=torch.uint8, device="cuda")
    assert torch.cuda.memory_allocated() - before >= 64 << 20
    assert int(block.sum().item()) == 64 << 20
    del block
    assert torch.cuda.memory_allocated() == before
