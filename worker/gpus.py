"""This node's GPUs: read through NVML where `nvidia-ml-py` and a driver are there, else by asking
nvidia-smi, else none (a CPU-only node). Nothing here raises: a heartbeat must go on without GPUs."""

from __future__ import annotations

import functools
import logging
import shutil
import subprocess
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

#: The nvidia-smi columns, in the order `parse_smi` reads them.
SMI_QUERY = "index,name,uuid,memory.total,memory.used,utilization.gpu,temperature.gpu"
SMI_ARGS = (f"--query-gpu={SMI_QUERY}", "--format=csv,noheader,nounits")
#: nvidia-smi can hang on a GPU in a bad state; a heartbeat must not wait on it for long.
SMI_TIMEOUT = 10.0
MIB = 1024 * 1024

_warned: set[str] = set()


def _warn_once(source: str, message: str, *args: object, level: int = logging.WARNING) -> None:
    """The same source would fail again every few seconds; one line in the log says it."""
    if source not in _warned:
        _warned.add(source)
        log.log(level, message, *args)


def list_gpus() -> list[dict[str, Any]]:
    """Each GPU's index, name, uuid, memory_total and memory_used (bytes), utilization_percent
    and temperature_c; a field the device does not report is None."""
    gpus = _nvml_gpus()
    if gpus is None:
        gpus = _smi_gpus()
    return gpus or []


def driver_versions() -> dict[str, str | None]:
    """The NVIDIA driver and the CUDA version it supports, as NVML tells them; None without NVML."""
    versions: dict[str, str | None] = {"nvidia_driver": None, "cuda_driver": None}
    nvml = _nvml()
    if nvml is None:
        return versions
    versions["nvidia_driver"] = _text(_optional(nvml, nvml.nvmlSystemGetDriverVersion))
    cuda = _optional(nvml, nvml.nvmlSystemGetCudaDriverVersion)  # e.g. 12040 for 12.4
    if isinstance(cuda, int):
        versions["cuda_driver"] = f"{cuda // 1000}.{cuda % 1000 // 10}"
    return versions


# NVML ---------------------------------------------------------------------------------------------


@functools.cache
def _nvml() -> ModuleType | None:
    """pynvml, initialised once per process; None where the package or the driver is missing."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...: no NVIDIA driver here
        # Expected on a CPU-only node that has the package installed: worth a line, not a warning.
        _warn_once("nvml", "NVML is not usable (%s); asking nvidia-smi instead", exc, level=logging.INFO)
        return None
    return pynvml


def _nvml_gpus() -> list[dict[str, Any]] | None:
    nvml = _nvml()
    if nvml is None:
        return None
    try:
        return [_nvml_gpu(nvml, nvml.nvmlDeviceGetHandleByIndex(i)) for i in range(nvml.nvmlDeviceGetCount())]
    except Exception as exc:
        _warn_once("nvml-read", "reading GPUs through NVML failed (%s); asking nvidia-smi instead", exc)
        return None


def _nvml_gpu(nvml: ModuleType, handle: object) -> dict[str, Any]:
    memory = _optional(nvml, lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
    rates = _optional(nvml, lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
    return {
        "index": nvml.nvmlDeviceGetIndex(handle),
        "name": _text(nvml.nvmlDeviceGetName(handle)),
        "uuid": _text(_optional(nvml, lambda: nvml.nvmlDeviceGetUUID(handle))),
        "memory_total": memory.total if memory is not None else None,
        "memory_used": memory.used if memory is not None else None,
        "utilization_percent": rates.gpu if rates is not None else None,
        "temperature_c": _optional(
            nvml, lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
        ),
    }


def _optional(nvml: ModuleType, read: Callable[[], T]) -> T | None:
    """A reading some devices do not support (temperature of a MIG slice, say) is None, not an error."""
    try:
        return read()
    except nvml.NVMLError:
        return None


def _text(value: str | bytes | None) -> str | None:
    # nvidia-ml-py before 11.515 hands back bytes.
    return value.decode() if isinstance(value, bytes) else value


# nvidia-smi ---------------------------------------------------------------------------------------


@functools.cache
def _smi_path() -> str | None:
    return shutil.which("nvidia-smi")


def _smi_gpus() -> list[dict[str, Any]] | None:
    path = _smi_path()
    if path is None:
        return None
    try:
        done = subprocess.run(
            [path, *SMI_ARGS], capture_output=True, text=True, timeout=SMI_TIMEOUT, check=True
        )
    except (OSError, subprocess.SubprocessError) as exc:
        # Its own words ("couldn't communicate with the NVIDIA driver") say more than the exit status.
        said = (getattr(exc, "stderr", None) or getattr(exc, "stdout", None) or "").strip()
        _warn_once("nvidia-smi", "nvidia-smi failed (%s %s); reporting no GPUs", exc, said)
        return None
    return parse_smi(done.stdout)


def parse_smi(text: str) -> list[dict[str, Any]]:
    """GPUs from the output of `nvidia-smi SMI_ARGS`: one CSV line per GPU, memory in MiB, no units."""
    gpus = []
    for line in text.splitlines():
        row = [field.strip() for field in line.split(", ")]
        if len(row) < 7:
            continue
        # nvidia-smi does not quote: a comma in a product name splits it; the other columns don't.
        index, name, uuid, total, used, util, temp = row[0], ", ".join(row[1:-5]), *row[-5:]
        total_mib, used_mib = _number(total), _number(used)
        gpus.append(
            {
                "index": _number(index),
                "name": name,
                "uuid": uuid,
                "memory_total": total_mib * MIB if total_mib is not None else None,
                "memory_used": used_mib * MIB if used_mib is not None else None,
                "utilization_percent": _number(util),
                "temperature_c": _number(temp),
            }
        )
    return gpus


def _number(value: str) -> int | None:
    """An integer column; `[N/A]` or `[Not Supported]` (a MIG slice, a passive card) is None."""
    try:
        return int(float(value.strip()))
    except (ValueError, OverflowError):
        return None
