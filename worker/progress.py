"""Following the events file a training process appends metrics to (see worker.runtime)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class EventsFileTail:
    """Returns the complete JSON lines appended since the last call; a half-written line waits."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = 0

    def read_new(self) -> list[dict[str, Any]]:
        try:
            with self._path.open("rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self._offset += end + 1
        out = []
        for raw in data[: end + 1].splitlines():
            try:
                item = json.loads(raw)
            except ValueError:
                log.warning("ignoring a malformed line in %s: %r", self._path, raw[:200])
                continue
            if isinstance(item, dict):
                out.append(item)
        return out
