"""An attempt's directories and the environment its process gets: the job contract.

The same layout serves the node (`AttemptDirs.create`) and a container's view of it
(`AttemptDirs.inside(...)`), so the contract names the paths the process itself sees.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from shared.schemas import TaskMessage


@dataclass(frozen=True)
class AttemptDirs:
    root: Path

    @staticmethod
    def inside(root: str) -> ContainerDirs:
        """The same layout under `root` in a (Linux) container."""
        return ContainerDirs(PurePosixPath(root))

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def output(self) -> Path:
        return self.root / "output"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def spec(self) -> Path:
        return self.root / "spec.json"

    @property
    def code(self) -> Path:
        return self.root / "code"

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


@dataclass(frozen=True)
class ContainerDirs:
    root: PurePosixPath

    data = property(lambda self: self.root / "data")
    output = property(lambda self: self.root / "output")
    checkpoints = property(lambda self: self.root / "checkpoints")
    events = property(lambda self: self.root / "events.jsonl")
    spec = property(lambda self: self.root / "spec.json")
    code = property(lambda self: self.root / "code")


def job_environment(message: TaskMessage, dirs: AttemptDirs | ContainerDirs) -> dict[str, str]:
    """The TRAINFARM_* variables of the contract, with paths as the process sees them."""
    return dict(
        {
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
    )
