"""An attempt's directories and the environment its process gets: the job contract.

The same layout serves the node (`AttemptDirs.create`) and a container's view of it
(`AttemptDirs.inside(...)`), so the contract names the paths the process itself sees.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath
from typing import Any, Generic, TypeVar

from shared.schemas import TaskMessage

P = TypeVar("P", bound=PurePath)


@dataclass(frozen=True)
class Layout(Generic[P]):
    """Where an attempt's files lie under `root`, on the node or as its container sees them."""

    root: P

    @property
    def data(self) -> P:
        return self.root / "data"

    @property
    def output(self) -> P:
        return self.root / "output"

    @property
    def checkpoints(self) -> P:
        return self.root / "checkpoints"

    @property
    def events(self) -> P:
        return self.root / "events.jsonl"

    @property
    def spec(self) -> P:
        return self.root / "spec.json"

    @property
    def code(self) -> P:
        return self.root / "code"

    @property
    def home(self) -> P:
        """HOME of a job run as TRAINFARM_JOB_USER (caches of pip, torch, Hugging Face go there)."""
        return self.root / "home"


@dataclass(frozen=True)
class AttemptDirs(Layout[Path]):
    """The attempt's directories on the node."""

    @staticmethod
    def inside(root: str) -> Layout[PurePosixPath]:
        """The same layout under `root` in a (Linux) container."""
        return Layout(PurePosixPath(root))

    @property
    def log(self) -> Path:
        return self.root / "job.log"

    @classmethod
    def create(cls, work_root: Path, job_id: int, attempt: int) -> AttemptDirs:
        dirs = cls(work_root / f"job-{job_id}" / f"attempt-{attempt}")
        shutil.rmtree(dirs.root, ignore_errors=True)  # leftovers of a run of this attempt that died
        for d in (dirs.data, dirs.output, dirs.checkpoints):
            d.mkdir(parents=True, exist_ok=True)
        return dirs


def job_environment(message: TaskMessage, dirs: Layout[Any]) -> dict[str, str]:
    """The TRAINFARM_* variables of the contract, with paths as the process sees them."""
    return {
        "TRAINFARM_JOB_ID": str(message.job_id),
        "TRAINFARM_ATTEMPT": str(message.attempt),
        "TRAINFARM_SPEC_FILE": str(dirs.spec),
        "TRAINFARM_DATA_DIR": str(dirs.data),
        "TRAINFARM_OUTPUT_DIR": str(dirs.output),
        "TRAINFARM_CHECKPOINT_DIR": str(dirs.checkpoints),
        "TRAINFARM_EVENTS_FILE": str(dirs.events),
        "TRAINFARM_DEVICES": str(message.spec.devices),
        "TRAINFARM_HYPERPARAMETERS": json.dumps(message.spec.hyperparameters),
    }
