"""A job's spec with a person's changes applied: what `trainfarm rerun` and the dashboard's re-run
form submit."""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from shared.schemas import JobSpec

#: Spec fields whose changes merge key by key into the old value (a null value removes the key);
#: every other field given replaces the old one.
MERGED = ("hyperparameters", "env")


def changed_spec(spec: dict[str, Any], changes: dict[str, Any]) -> JobSpec:
    """`spec` with `changes` applied, validated as a new submission would be; a bad change is a 422
    naming `body.changes.<field>`, as if it had been submitted that way."""
    merged = dict(spec)
    for key, value in changes.items():
        if key in MERGED and isinstance(value, dict) and isinstance(merged.get(key), dict):
            combined = {**merged[key], **value}
            merged[key] = {k: v for k, v in combined.items() if v is not None}
        else:
            merged[key] = value
    try:
        return JobSpec.model_validate(merged)
    except ValidationError as exc:
        errors = []
        for err in exc.errors():
            loc = tuple(err.get("loc", ()))
            errors.append({**err, "loc": ("body", "changes", *loc)})
        raise RequestValidationError(errors) from None
