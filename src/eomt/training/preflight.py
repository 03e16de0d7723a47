"""The data check a training run starts with, done once per version of the dataset's files.

Before anything is written to `train.out_dir`, every image of the train and val splits goes through
`eomt.data.check`: annotation files indexed without errors (unknown category ids, images missing
from the JSON, ...), every image present with a readable header, every label file decoded with
known values. A run refuses to start on an error and lists the first ones with their count.

Images are read to their header only: that finds missing and unreadable files and saves the
image decode; label files are decoded whatever we choose (their values are checked). Measured per
image on one CPU core, 640x480 JPEGs: semantic label PNGs 9-15 ms header-only against 10-17 ms
decoding everything, COCO panoptic PNGs 24 ms against 31 ms; loading a sample for training costs
27-34 ms, and the fingerprint 0.2 ms. So a check costs about one pass over the data, spread over
`data.num_workers` processes, once per version of the files; `train.data_check=false` skips it.
A body truncated behind a sound header is found when training reads it, and the data module
replaces that sample (named in the log).

The outcome is cached in `OUT_DIR/data_check.json`, keyed by a fingerprint of the split: the
dataset's name and options, its class names, its size, and the path, size and modification time of
every file it reads. A resumed run whose data did not change skips the check (one log line says
so); a changed, added or removed file checks the split again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from eomt.data.sources import FolderSource, ZipSource
from eomt.data.check import CheckReport, check_dataset
from eomt.errors import EomtError

log = logging.getLogger(__name__)

CACHE_NAME = "data_check.json"
CHECK_VERSION = 1  # part of the fingerprint: a changed check invalidates every cached outcome
SHOWN_ERRORS = 20  # errors listed in a refusal; the rest are counted


class DataCheckFailed(EomtError, ValueError):
    """The data check found errors; the message lists the first ones and their count."""


@dataclass(frozen=True)
class Split:
    """One split to check: the dataset and what names it (format, root, split, task, options)."""

    name: str
    dataset: Any
    spec: Mapping[str, Any]


def dataset_files(dataset: Any) -> list[Path]:
    """The files a dataset reads: every file of its folder sources, its archives, its annotation JSON."""
    files: set[Path] = set()
    for value in vars(dataset).values():
        if isinstance(value, FolderSource):
            files.update(value.root / member for member in value.members())
        elif isinstance(value, ZipSource):
            files.add(value.path)
    json_name = getattr(dataset, "json_name", None)
    if json_name and Path(json_name).is_file():
        files.add(Path(json_name))
    return sorted(files)


def fingerprint(split: Split, exclude: Path | None = None) -> str:
    """Digest of what the check of `split` depends on (options, classes, size, files' stat); files
    under `exclude` (the run's own folder, when it lies inside the data) do not count."""
    h = hashlib.sha256()
    about = {
        "version": CHECK_VERSION, "spec": dict(split.spec), "size": len(split.dataset),
        "classes": list(getattr(split.dataset, "class_names", ())),
    }
    h.update(json.dumps(about, sort_keys=True, default=str).encode())
    skip = exclude.resolve() if exclude is not None else None
    for path in dataset_files(split.dataset):
        path = path.resolve()
        if skip is not None and path.is_relative_to(skip):
            continue
        try:
            st = path.stat()
            h.update(f"\n{path}\t{st.st_size}\t{st.st_mtime_ns}".encode())
        except OSError:
            h.update(f"\n{path}\tmissing".encode())
    return h.hexdigest()


def is_checkable(dataset: Any) -> bool:
    """Datasets read from files have `check_item`; generated ones (synthetic scenes) have nothing to check."""
    return hasattr(dataset, "check_item")


def check_progress(split: str, bar: bool) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """(update(done, total), close()): a progress bar, or a log line every 30 s with rate and ETA."""
    if bar:
        from tqdm import tqdm

        pbar = tqdm(total=0, unit="img", desc=f"data check ({split})", file=sys.stderr, disable=None, leave=False)

        def update(done: int, total: int) -> None:
            pbar.total = total
            pbar.update(done - pbar.n)

        return update, pbar.close
    start = last = time.monotonic()

    def update_log(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= 30 and done < total:
            last = now
            rate = done / (now - start)
            log.info("data check (%s): %d/%d images, %.0f img/s, %.0f s left", split, done, total, rate,
                     (total - done) / rate)

    return update_log, lambda: None


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        cache = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def check_training_data(splits: list[Split], cache_path: Path, *, workers: int = 0,
                        progress: bool = True) -> dict[str, Any]:
    """Check every split (or find its unchanged outcome in `cache_path`); raise `DataCheckFailed`
    listing the errors. Writes nothing: returns the JSON-able cache to store once the run starts."""
    cache = _read_cache(cache_path)
    entries: dict[str, Any] = {}
    failed: list[tuple[str, CheckReport]] = []
    seen: dict[str, str] = {}  # fingerprint -> the split checked under it in this call
    for split in splits:
        if not is_checkable(split.dataset):
            log.debug("data check (%s): generated data, no files to check", split.name)
            continue
        key = fingerprint(split, exclude=cache_path.parent)
        if key in seen:  # e.g. train and val are one split: checked once
            log.info("data check (%s): the same data as %s", split.name, seen[key])
            if seen[key] in entries:
                entries[split.name] = entries[seen[key]]
            continue
        seen[key] = split.name
        cached = cache.get(split.name)
        if isinstance(cached, dict) and cached.get("fingerprint") == key:
            log.info("data check (%s): %d images unchanged since the check of %s (cached in %s)",
                     split.name, cached.get("images", 0), cached.get("checked_at", "?"), cache_path)
            entries[split.name] = cached
            continue
        start = time.perf_counter()
        update, close = check_progress(split.name, progress)
        try:
            report = check_dataset(split.dataset, read_images=False, progress=update, workers=workers)
        finally:
            close()
        seconds = time.perf_counter() - start
        if not report.ok:
            failed.append((split.name, report))
            continue
        log.info("data check (%s): %d images, no errors, %d warnings (%.1f s)", split.name,
                 report.counts.get("images", 0), len(report.warnings), seconds)
        for warning in report.warnings[:3]:
            log.warning("data check (%s): %s", split.name, warning)
        if len(report.warnings) > 3:
            log.warning("data check (%s): ... and %d more warnings (eomt data check lists them)",
                        split.name, len(report.warnings) - 3)
        entries[split.name] = {
            "fingerprint": key, "images": report.counts.get("images", 0), "warnings": len(report.warnings),
            "seconds": round(seconds, 2), "checked_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
    if failed:
        raise DataCheckFailed(_failure_message(failed))
    return entries


def _failure_message(failed: list[tuple[str, CheckReport]]) -> str:
    counts = ", ".join(f"{len(r.errors)} in the {name} split" for name, r in failed)
    errors = [f"{name}: {e}" for name, r in failed for e in r.errors]
    lines = [f"data check failed ({counts}); training not started, nothing written:"]
    lines += [f"  - {e}" for e in errors[:SHOWN_ERRORS]]
    if len(errors) > SHOWN_ERRORS:
        lines.append(f"  ... and {len(errors) - SHOWN_ERRORS} more (eomt data check CONFIG lists them all)")
    lines.append("Fix these files or annotations, then run the same command again.")
    return "\n".join(lines)
