"""What a running attempt uses, sampled by its worker and reported as `usage` events: its GPUs'
utilisation and memory (NVML, else nvidia-smi: worker/gpus.py) and its process tree's CPU and
resident memory (psutil). The worker takes the samples, not the job, so a job cannot flood the
farm with them: one every `usage_sample_interval` seconds, whatever the job does."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psutil

from shared.events import MAX_USAGE_GPUS, CpuUsage, GpuUsage, Usage
from worker import gpus as node_gpus

if TYPE_CHECKING:  # a GPU test samples with no Redis client installed
    from worker.reporter import AttemptReporter

log = logging.getLogger(__name__)

#: The highest CPU percent an event may carry (percent of one core, 4,096 cores).
MAX_CPU_PERCENT = 100.0 * 4096
#: Seconds `stop` waits for a sample under way (nvidia-smi can take a while on a sick GPU).
STOP_WAIT = 15.0


class ProcessTree:
    """CPU and memory of a process and all its descendants (DDP ranks, DataLoader workers).

    psutil measures a process's CPU since its previous reading of the same object, so each
    process keeps its object between samples; one first seen reads 0 % for that sample. RSS is
    summed over the processes: pages they share (a forked worker's copy of the model) count once
    per process, as `top` shows them.
    """

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._known: dict[int, psutil.Process] = {}

    def read(self) -> CpuUsage | None:
        """The tree now; None once its root is gone."""
        try:
            root = psutil.Process(self._pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return None
        percent, rss, known = 0.0, 0, {}
        for proc in procs:
            seen = self._known.get(proc.pid)
            if seen is not None and seen == proc:  # the same process, not a reused pid
                proc = seen
            try:
                with proc.oneshot():
                    percent += proc.cpu_percent(interval=None)
                    rss += proc.memory_info().rss
            except psutil.Error:  # ended between the listing and the reading
                continue
            known[proc.pid] = proc
        self._known = known
        return CpuUsage(percent=min(percent, MAX_CPU_PERCENT), rss=rss)


def gpu_usage(indices: tuple[int, ...], read: Callable[[], list[dict[str, Any]]]) -> list[GpuUsage]:
    """The attempt's GPUs (by NVML index) as `read` reports the node's; a GPU it cannot see is left out."""
    wanted = set(indices)
    out = []
    for gpu in read():
        if gpu.get("index") not in wanted:
            continue
        util = gpu.get("utilization_percent")
        out.append(
            GpuUsage(
                index=gpu["index"],
                util=None if util is None else float(min(max(util, 0), 100)),
                mem_used=gpu.get("memory_used"),
                mem_total=gpu.get("memory_total"),
            )
        )
    return out[:MAX_USAGE_GPUS]


class UsageSampler:
    """Samples one attempt on a thread of its own from `start` to `stop`.

    `gpus` are the NVML indices the attempt was given (none on a CPU node), `pid` its root process
    on this node (a container's first process where the engine runs on this kernel; None where
    its processes are not this machine's: then only its GPUs are sampled). `read_gpus` lists the node's GPUs as worker/gpus.py does.
    """

    def __init__(
        self,
        reporter: AttemptReporter,
        gpus: tuple[int, ...],
        pid: int | None,
        interval: float,
        read_gpus: Callable[[], list[dict[str, Any]]] = node_gpus.list_gpus,
    ) -> None:
        self._reporter = reporter
        self._gpus = gpus
        self._tree = ProcessTree(pid) if pid is not None else None
        self._interval = interval
        self._read_gpus = read_gpus
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    @property
    def has_work(self) -> bool:
        return bool(self._gpus) or self._tree is not None

    def start(self) -> None:
        if not self.has_work:
            return
        if self._tree is not None:
            self._tree.read()  # the baseline the first sample's CPU is measured from
        self._thread = threading.Thread(target=self._run, name="usage-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(STOP_WAIT)

    def sample(self) -> Usage | None:
        """One sample now; None when there is nothing to say (the process ended, no GPU readable)."""
        gpus = gpu_usage(self._gpus, self._read_gpus) if self._gpus else []
        cpu = self._tree.read() if self._tree is not None else None
        if not gpus and cpu is None:
            return None
        return Usage(gpus=gpus or None, cpu=cpu)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                usage = self.sample()
                if usage is not None:
                    self._reporter.report(usage)
            except Exception as exc:  # a sample is a nicety: the attempt goes on without it
                if not self._failing:
                    log.warning("usage sampling failed, retrying every %ss: %s", self._interval, exc)
                self._failing = True
            else:
                self._failing = False
