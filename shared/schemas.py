"""The job spec and the messages that cross process boundaries, validated on both sides."""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

HyperValue = str | int | float | bool | list[str | int | float | bool]

#: Built-in recipes and the hyperparameters each one cannot run without.
RECIPES: dict[str, tuple[str, ...]] = {"tabular-classifier": ("target",)}

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
#: A code bundle is named by the SHA-256 of its archive (content addressed: one upload per version).
CODE_DIGEST_PATTERN = r"^[0-9a-f]{64}$"
#: Docker image references: [registry[:port]/]path[:tag][@digest].
IMAGE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}$"
ENVIRONMENT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
#: A job whose spec does not say `preemptible` is preemptible below this priority.
PREEMPTIBLE_BELOW = 5
#: A tag: a word a person can type and a URL can carry (`baseline`, `lr:0.01`, `sweep:3`).
TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,63}$"
#: The project of a job that names none (and of every job from before there were projects).
DEFAULT_PROJECT = "default"
#: An argv string cannot hold a NUL byte (exec refuses it), so one is refused at submission.
NO_NUL_PATTERN = r"^[^\x00]*$"


class JobSpec(BaseModel):
    """What a user asks to run: a built-in recipe or a command, on named datasets."""

    # No NaN or infinity: the database's JSON and the answers' JSON cannot hold them.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str | None = Field(default=None, pattern=NAME_PATTERN, description="Display name")
    project: str = Field(
        default=DEFAULT_PROJECT,
        pattern=NAME_PATTERN,
        description="Project the job belongs to: the job list, compare and notifications filter by it",
    )
    tags: list[Annotated[str, Field(pattern=TAG_PATTERN)]] = Field(
        default_factory=list, max_length=32, description="Labels to find the job by (`baseline`, `lr:0.01`)"
    )
    recipe: Literal["tabular-classifier"] | None = Field(default=None, description="Built-in recipe")
    command: list[Annotated[str, Field(pattern=NO_NUL_PATTERN)]] | None = Field(
        default=None, min_length=1, description="Command to run instead of a recipe, as argv"
    )
    code: str | None = Field(
        default=None,
        pattern=CODE_DIGEST_PATTERN,
        description="Digest of a code bundle uploaded to /api/code; the command runs in its unpacked tree",
    )
    image: str | None = Field(
        default=None, pattern=IMAGE_PATTERN, description="Docker image to run in (the Docker backend)"
    )
    environment: str | None = Field(
        default=None,
        pattern=ENVIRONMENT_PATTERN,
        description="Named conda or venv environment on the worker to run in (the process backend)",
    )
    memory_mb: int | None = Field(
        default=None, ge=64, le=16 * 1024 * 1024, description="Memory limit in MiB (Docker backend)"
    )
    cpus: float | None = Field(default=None, gt=0, le=1024, description="CPU limit in cores (Docker backend)")
    datasets: list[Annotated[str, Field(pattern=NAME_PATTERN)]] = Field(
        default_factory=list, max_length=32, description="Dataset names, as uploaded to /api/datasets"
    )
    hyperparameters: dict[str, HyperValue] = Field(default_factory=dict)
    queue: Literal["gpu", "cpu"] = "gpu"
    devices: int = Field(default=1, ge=1, le=64, description="Devices (GPUs, or CPU processes) to use")
    max_epochs: int = Field(default=10, ge=1, le=1_000_000)
    priority: int = Field(
        default=5,
        ge=0,
        le=9,
        description="0 lowest, 9 most urgent; members may use up to TRAINFARM_MEMBER_MAX_PRIORITY (7)",
    )
    preemptible: bool | None = Field(
        default=None,
        description=(
            "Whether the farm may stop it (checkpoint, queue again, no retry used) for a job of higher "
            "priority when preemption is on; unset: yes below priority 5"
        ),
    )
    timeout: int | None = Field(default=None, ge=1, le=30 * 86400, description="Seconds per attempt")
    max_retries: int = Field(default=2, ge=0, le=20)
    checkpoint_interval: int = Field(default=300, ge=5, le=86400, description="Seconds between uploads")
    seed: int = Field(
        default=0, ge=0, le=2**32 - 1, description="Random seed (NumPy's range, which Lightning seeds)"
    )
    env: dict[
        Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")],
        Annotated[str, Field(max_length=4096, pattern=NO_NUL_PATTERN)],
    ] = Field(
        default_factory=dict,
        max_length=64,
        description=(
            "Environment variables for the job, set last (both backends). Not for secrets: every "
            "user of the farm can read a spec. TRAINFARM_*, PATH, PYTHONPATH, PYTHONHOME, NVIDIA_* "
            "and the GPU-selection names the farm sets are refused"
        ),
    )

    @field_validator("tags")
    @classmethod
    def _distinct_tags(cls, tags: list[str]) -> list[str]:
        # In the order given, once each: a tag is a set member, but the order is the user's.
        return list(dict.fromkeys(tags))

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        # Upper-cased: Windows names are case-insensitive. The farm sets these; NVIDIA_VISIBLE_DEVICES
        # or CUDA_VISIBLE_DEVICES from a spec would reach GPUs given to other jobs.
        farm = {"PATH", "PYTHONPATH", "PYTHONHOME", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"}
        for name in env:
            upper = name.upper()
            if upper.startswith(("TRAINFARM_", "NVIDIA_")) or upper in farm:
                raise ValueError(f"env: {name} is set by the farm, not by a job spec")
        return env

    @model_validator(mode="after")
    def _one_entrypoint(self) -> JobSpec:
        if (self.recipe is None) == (self.command is None):
            raise ValueError("give exactly one of 'recipe' or 'command'")
        if self.recipe is not None:
            for key in RECIPES[self.recipe]:
                if key not in self.hyperparameters:
                    raise ValueError(f"hyperparameters.{key} is required by recipe '{self.recipe}'")
            if self.code is not None:
                raise ValueError("'code' goes with a 'command'; a recipe brings its own code")
            if not self.datasets:
                raise ValueError(f"datasets: recipe '{self.recipe}' needs a dataset to train on")
        if self.image is not None and self.environment is not None:
            raise ValueError("give at most one of 'image' (Docker) or 'environment' (conda/venv)")
        return self

    @property
    def may_be_preempted(self) -> bool:
        return self.preemptible if self.preemptible is not None else self.priority < PREEMPTIBLE_BELOW

    @property
    def backend(self) -> Literal["docker", "process"]:
        return "docker" if self.image is not None else "process"


class DatasetRef(BaseModel):
    name: str
    key: str
    etag: str


class TaskMessage(BaseModel):
    """The Celery task's argument: everything a worker needs, so it never reads the database."""

    job_id: int
    attempt: int
    spec: JobSpec
    datasets: list[DatasetRef] = Field(default_factory=list)
    #: When the master signed it (Unix time): a worker refuses a message older than
    #: `message_max_age` (shared/signing.py).
    issued_at: float = Field(default_factory=time.time)


class EventKind(StrEnum):
    """What a worker reports about an attempt; the models of each are in shared/events.py."""

    STARTED = "started"
    METRICS = "metrics"
    ARTIFACT = "artifact"
    FINISHED = "finished"
    #: The attempt's resource use, sampled by its worker (worker/usage_sampler.py).
    USAGE = "usage"


class AttemptOutcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
