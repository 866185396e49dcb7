"""The node caches' size limit, without services: LRU order, the limit kept after each add, entries
pinned by this or another process never removed, dead processes' pins ignored, partial downloads kept,
an entry over the whole limit, and the defaults."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shared.settings import PROJECT_ROOT, Settings, child_environment
from worker.cache_budget import (
    CODE_DISK_SHARE,
    DATASET_DISK_SHARE,
    CacheBudget,
    Pins,
    cache_usage,
    dataset_budget,
    disk_share,
)

LIMIT = 1000


@pytest.fixture
def budget(tmp_path: Path) -> CacheBudget:
    """A dataset-shaped cache: entries are `<key hash>/<etag>` folders."""
    return CacheBudget(tmp_path / "cache", LIMIT, depth=2, label="test cache")


def add(budget: CacheBudget, key: str, size: int, pins: Pins | None = None) -> list[str]:
    """Download `key` as a fetch does: pin, write, report the add; the keys it evicted."""
    own = pins is None
    pins = pins or Pins("test")
    try:
        folder = pins.hold(budget, key)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "data.bin").write_bytes(b"x" * size)
        return budget.added(key)
    finally:
        if own:
            pins.release()


def use(budget: CacheBudget, key: str) -> None:
    with Pins("test") as pins:
        pins.hold(budget, key)


def keys(budget: CacheBudget) -> list[str]:
    return sorted(e.key for e in budget.entries())


def used(budget: CacheBudget) -> int:
    return sum(e.size for e in budget.entries())


def test_least_recently_used_leave_first_and_the_limit_holds_after_each_add(budget: CacheBudget) -> None:
    assert add(budget, "a/1", 400) == []
    assert add(budget, "b/1", 400) == []
    assert add(budget, "c/1", 400) == ["a/1"]
    assert keys(budget) == ["b/1", "c/1"] and used(budget) == 800
    assert not (budget.root / "a").exists(), "the empty key folder goes with its last version"

    use(budget, "b/1")  # now c is the least recently used
    assert add(budget, "d/1", 400) == ["c/1"]
    assert keys(budget) == ["b/1", "d/1"]
    assert add(budget, "e/1", 900) == ["b/1", "d/1"]
    assert keys(budget) == ["e/1"] and used(budget) <= LIMIT


def test_an_entry_pinned_in_this_process_stays_until_released(budget: CacheBudget) -> None:
    add(budget, "old/1", 300)
    with Pins("long attempt") as long_attempt:
        add(budget, "held/1", 600, long_attempt)
        # Another attempt (another thread, same process) adds what would push `held` out.
        with Pins("short attempt") as short_attempt:
            assert add(budget, "new/1", 600, short_attempt) == ["old/1"]
            assert keys(budget) == ["held/1", "new/1"]
        # The short one ended: its entry is the only one that may go to bring the cache back.
        assert keys(budget) == ["held/1"]
        assert (budget.path("held/1") / "data.bin").stat().st_size == 600
        add(budget, "newer/1", 300)
    # Released: the cache is trimmed at once, the least recently used first.
    assert keys(budget) == ["held/1", "newer/1"] and used(budget) <= LIMIT
    assert add(budget, "newest/1", 300) == ["held/1"]


def test_an_entry_pinned_by_another_process_stays_and_its_pin_dies_with_it(budget: CacheBudget) -> None:
    add(budget, "held/1", 600)
    holder = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from worker.cache_budget import CacheBudget, Pins
        budget = CacheBudget(Path({str(budget.root)!r}), {LIMIT}, depth=2, label="test cache")
        pins = Pins("other process")
        pins.hold(budget, "held/1")
        print("held", flush=True)
        sys.stdin.read()  # until the test kills us
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=PROJECT_ROOT,
        env=child_environment({}),
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        [record] = budget.pins_dir.glob("*.json")
        assert json.loads(record.read_text()) == {
            "pid": proc.pid,
            "owner": "other process",
            "keys": ["held/1"],
        }
        with Pins("this process") as pins:
            assert add(budget, "new/1", 600, pins) == []
            assert keys(budget) == ["held/1", "new/1"]
        # Ours released: ours is the one that goes, the other process's stays.
        assert keys(budget) == ["held/1"]
        add(budget, "new/2", 300)
        assert keys(budget) == ["held/1", "new/2"]
    finally:
        proc.kill()  # SIGKILL: no cleanup runs; only the OS drops the lock
        proc.wait()
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.stdout.close()
    # The dead process's pin is ignored (and removed); `held` is the least recently used.
    assert add(budget, "new/3", 300) == ["held/1"]
    assert keys(budget) == ["new/2", "new/3"]
    assert list(budget.pins_dir.iterdir()) == []


def test_a_pin_record_left_by_a_dead_process_protects_nothing(budget: CacheBudget) -> None:
    add(budget, "a/1", 600)
    budget.pins_dir.mkdir(parents=True, exist_ok=True)
    (budget.pins_dir / "dead.json").write_text(json.dumps({"pid": 999999, "owner": "x", "keys": ["a/1"]}))
    (budget.pins_dir / "dead.lock").touch()  # nobody holds it
    assert add(budget, "b/1", 600) == ["a/1"]
    assert not (budget.pins_dir / "dead.json").exists()


def test_a_partial_download_is_never_evicted(budget: CacheBudget, tmp_path: Path) -> None:
    add(budget, "done/1", 300)
    with Pins("downloading attempt") as downloading:
        folder = downloading.hold(budget, "partial/1")
        folder.mkdir(parents=True)
        (folder / ".data.bin.0123abcd.part").write_bytes(b"x" * 500)  # what ArtifactStore.download writes
        assert add(budget, "other/1", 500) == ["done/1"]
        assert (folder / ".data.bin.0123abcd.part").exists()
        assert budget.usage()["pinned"] == 1

    # A bundle-shaped cache: the partial lies beside the archive and counts as that entry.
    code = CacheBudget(tmp_path / "code", LIMIT, depth=1, label="test code cache")
    partial = code.root / ".abc.tar.gz.99ff.part"
    with Pins("downloading attempt") as downloading:
        archive = downloading.hold(code, "abc.tar.gz")
        code.root.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(b"x" * 700)
        with Pins("other attempt") as other:
            other.hold(code, "def.tar.gz").write_bytes(b"x" * 700)
            assert code.added("def.tar.gz") == []
        # The other attempt's archive, no longer pinned, is the only one that may go.
        assert keys(code) == ["abc.tar.gz"] and partial.exists() and not archive.exists()
    assert used(code) <= LIMIT


def test_an_entry_over_the_whole_limit_is_used_then_evicted_first(
    budget: CacheBudget, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="worker.cache_budget"):
        with Pins("big attempt") as pins:
            add(budget, "big/1", 1500, pins)
            assert keys(budget) == ["big/1"], "kept for the attempt that needs it"
        assert "more than the whole limit" in caplog.text
    assert keys(budget) == [] and used(budget) == 0

    # Over the limit goes before older, smaller entries (one left by an older worker without pins).
    for key, size, stamp in [("s1/1", 200, 1), ("s2/1", 200, 2), ("huge/1", 1200, 3)]:
        folder = budget.path(key)
        folder.mkdir(parents=True)
        (folder / "data.bin").write_bytes(b"x" * size)
        os.utime(folder, ns=(stamp, stamp))
    assert budget.evict() == ["huge/1"]
    assert keys(budget) == ["s1/1", "s2/1"]


def test_files_above_the_entry_depth_are_entries_too(budget: CacheBudget) -> None:
    budget.root.mkdir(parents=True)
    (budget.root / "stray.bin").write_bytes(b"x" * 700)
    os.utime(budget.root / "stray.bin", ns=(1, 1))
    assert add(budget, "a/1", 600) == ["stray.bin"]


def test_limits_default_to_a_share_of_the_disk_and_accept_human_sizes(tmp_path: Path) -> None:
    root = tmp_path / "not" / "there" / "yet"
    assert dataset_budget(root, None).max_bytes == disk_share(tmp_path, DATASET_DISK_SHARE) > 0
    assert dataset_budget(root, 1234).max_bytes == 1234
    human = {"data_dir": tmp_path, "dataset_cache_max_bytes": "1.5GiB", "code_cache_max_bytes": "20MB"}
    settings = Settings.model_validate(human)
    assert settings.dataset_cache_max_bytes == 1536 * 1024**2
    assert settings.code_cache_max_bytes == 20_000_000
    # A worker started with these settings gets the limit in bytes; unset stays unset.
    assert settings.to_env()["TRAINFARM_DATASET_CACHE_MAX_BYTES"] == str(1536 * 1024**2)
    assert "TRAINFARM_DATASET_CACHE_MAX_BYTES" not in Settings(data_dir=tmp_path).to_env()

    usage = cache_usage(Settings(data_dir=tmp_path))
    assert usage["datasets"] == {
        "bytes": 0,
        "entries": 0,
        "max_bytes": disk_share(tmp_path, DATASET_DISK_SHARE),
        "pinned": 0,
    }
    assert usage["code"]["max_bytes"] == disk_share(tmp_path, CODE_DISK_SHARE)
