"""DistributedDataParallel on the GPU, with no farm around it: NCCL with one rank per GPU, and two
processes sharing one GPU (over gloo: NCCL refuses two ranks on one device since NCCL 2.5,
"Duplicate GPU detected"). tests/gpu/test_gpu_farm.py runs the same ranks as a farm job."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.gpu
torch = pytest.importorskip("torch")

PY = sys.executable
#: One rank: a DDP step on its GPU, then checks that every rank holds the same averaged gradient
#: and that an all-reduce sums the ranks.
RANK = textwrap.dedent(
    """
    import os, sys
    import torch, torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    backend = sys.argv[1]
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(backend, rank=rank, world_size=world)
    model = DistributedDataParallel(torch.nn.Linear(4, 1).cuda(), device_ids=[torch.cuda.current_device()])
    torch.manual_seed(rank)  # each rank its own batch
    model(torch.randn(8, 4, device="cuda")).sum().backward()
    grad = model.module.weight.grad
    low, high = grad.clone(), grad.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    assert torch.equal(low, high), "ranks disagree on the averaged gradient"
    total = torch.tensor([rank + 1.0], device="cuda")
    dist.all_reduce(total)
    print(f"rank {rank}/{world} {backend} on cuda:{torch.cuda.current_device()} sum {total.item():g}", flush=True)
    dist.destroy_process_group()
    """
)
#: Starts `world` ranks of RANK on this machine (argv: world, backend), as torchrun would.
LAUNCH = textwrap.dedent(
    f"""
    import os, socket, subprocess, sys
    world, backend = int(sys.argv[1]), sys.argv[2]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world))
    ranks = [
        subprocess.Popen([sys.executable, "-c", {RANK!r}, backend], env=dict(env, RANK=str(r)))
        for r in range(world)
    ]
    sys.exit(max(p.wait(timeout=120) for p in ranks))
    """
)


def launch(world: int, backend: str, **env: str) -> list[str]:
    done = subprocess.run(
        [PY, "-c", LAUNCH, str(world), backend],
        capture_output=True,
        text=True,
        timeout=150,
        env={**os.environ, **env},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return sorted(done.stdout.splitlines())


def test_nccl_ddp_with_one_rank_per_gpu() -> None:
    world = torch.cuda.device_count()
    total = world * (world + 1) // 2
    assert launch(world, "nccl") == [f"rank {r}/{world} nccl on cuda:{r} sum {total}" for r in range(world)]


def test_two_ddp_processes_share_one_gpu() -> None:
    lines = launch(2, "gloo", CUDA_VISIBLE_DEVICES="0")
    assert lines == ["rank 0/2 gloo on cuda:0 sum 3", "rank 1/2 gloo on cuda:0 sum 3"]
