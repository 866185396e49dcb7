"""The worker's GPU readings on a real GPU, with no farm around them: NVML agrees with nvidia-smi,
and the usage sampler sees a CUDA process's utilisation and memory on its GPU."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from worker import gpus
from worker.usage_sampler import UsageSampler

pytestmark = pytest.mark.gpu
PY = sys.executable
#: Holds 1 GiB of its GPU and keeps the GPU busy until its stdin closes.
BUSY_GPU = textwrap.dedent(
    """
    import sys, threading, torch
    held = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    a = torch.randn(2048, 2048, device="cuda")
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    print("ready", flush=True)
    while not done.is_set():
        for _ in range(20):
            a = torch.tanh(a @ a)
        torch.cuda.synchronize()
    """
)


def test_nvml_reads_the_gpus_and_nvidia_smi_agrees() -> None:
    found = gpus.list_gpus()
    assert found and all(g["memory_total"] > 0 and g["name"] and g["uuid"] for g in found), found
    assert gpus.driver_versions()["nvidia_driver"]
    smi = shutil.which("nvidia-smi")
    if smi is not None:  # the fallback path, on the same GPUs
        text = subprocess.run([smi, *gpus.SMI_ARGS], capture_output=True, text=True, check=True).stdout
        assert [(g["index"], g["uuid"]) for g in gpus.parse_smi(text)] == [
            (g["index"], g["uuid"]) for g in found
        ]


def test_the_sampler_sees_a_cuda_process_use_its_gpu() -> None:
    index = gpus.list_gpus()[0]["index"]
    env = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": str(index)}
    proc = subprocess.Popen(
        [PY, "-c", BUSY_GPU], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, **env}
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        sampler = UsageSampler(None, (index,), proc.pid, 0.5)  # type: ignore[arg-type]  # sampled, not reported
        sampler.sample()  # the CPU baseline
        deadline = time.monotonic() + 60
        while True:
            usage = sampler.sample()
            assert usage is not None and usage.gpus is not None and usage.cpu is not None
            [gpu] = usage.gpus
            if (gpu.util or 0) > 0 and (gpu.mem_used or 0) >= 1 << 30 and usage.cpu.percent > 0:
                break
            assert time.monotonic() < deadline, f"no busy GPU seen: {usage}"
            time.sleep(0.5)
        assert gpu.index == index and gpu.mem_total and gpu.mem_total > gpu.mem_used  # type: ignore[operator]
        assert usage.cpu.rss > 0
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)
