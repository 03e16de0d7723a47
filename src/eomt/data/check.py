"""`check`: validate a dataset before training and count what it holds.

Errors are what would break or silently corrupt training: missing or unreadable images and
annotation files, unknown category ids, panoptic PNG ids that disagree with `segments_info`,
repeated segment ids, label values outside the class list. Warnings are worth a look: images
without segments (skipped), size mismatches (resized), classes never seen. Each annotation file is
read once; per-class counts are one bincount over all images.
"""

from __future__ import annotations

import logging
import os
import textwrap
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from eomt.config import ConfigError
from eomt.data.base import ItemCheck
from eomt.data.sources import DatasetError

log = logging.getLogger(__name__)


@dataclass
class CheckReport:
    """Outcome of `check_dataset`: `ok` when there is no error; messages name the files."""

    dataset: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self, limit: int = 20) -> str:
        """Readable summary; at most `limit` errors and warnings are listed."""
        c = self.counts
        lines = [f"dataset: {self.dataset}"]
        if c:
            lines.append(f"images: {c['images']} checked, {c['images_with_errors']} with errors, "
                         f"{c['images_empty']} without segments")
            lines.append(f"segments: {c['segments']} (things {c['things']}, stuff {c['stuff']})")
            per_class = ", ".join(f"{k}: {v}" for k, v in c["segments_per_class"].items())
            lines += textwrap.wrap(f"per class: {per_class}", 100, subsequent_indent="  ")
        for title, items in (("errors", self.errors), ("warnings", self.warnings)):
            if items:
                lines.append(f"{title} ({len(items)}):")
                lines += [f"  - {m}" for m in items[:limit]]
                if len(items) > limit:
                    lines.append(f"  ... and {len(items) - limit} more")
        lines.append("OK" if self.ok else f"FAILED: {len(self.errors)} errors")
        return "\n".join(lines)


def _generic_check(dataset: Any, index: int) -> ItemCheck:
    """For datasets without `check_item`: load the sample and look at its labels."""
    out = ItemCheck()
    try:
        _, target = dataset.load(index) if hasattr(dataset, "load") else dataset[index]
    except (DatasetError, OSError) as e:
        out.errors.append(f"item {index}: {e}")
        return out
    out.labels = target.labels.numpy()
    if out.labels.size == 0:
        out.warnings.append(f"item {index}: no segments")
    return out


def _build(spec: Mapping[str, Any]) -> Any:
    from eomt.data.registry import build_dataset  # the registry imports every format: only on demand

    spec = dict(spec)
    name = spec.pop("format", None) or spec.pop("name", None)
    if name is None:
        raise ConfigError("dataset spec: no 'format'; expected e.g. {'format': 'semantic_folder', 'root': ...}")
    return build_dataset(name, **spec)


def _check_one(dataset: Any, index: int, read_images: bool) -> ItemCheck:
    if hasattr(dataset, "check_item"):
        return dataset.check_item(index, read_images)
    return _generic_check(dataset, index)


class _ItemChecks:
    """`ItemCheck` of image i as a map-style dataset, so DataLoader workers can check in parallel."""

    def __init__(self, dataset: Any, read_images: bool) -> None:
        self.dataset, self.read_images = dataset, read_images

    def __getitem__(self, index: int) -> ItemCheck:
        return _check_one(self.dataset, index, self.read_images)


def _as_is(item: ItemCheck) -> ItemCheck:
    return item


POOL_MIN_IMAGES = 64  # below this, starting worker processes costs more than it saves


def _item_checks(dataset: Any, total: int, read_images: bool, workers: int) -> Iterator[ItemCheck]:
    """Item checks in index order, computed here or, with `workers` > 0, in up to that many
    processes (no more than the CPUs this process may use)."""
    workers = min(workers, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if workers <= 1 or total < POOL_MIN_IMAGES:
        for i in range(total):
            yield _check_one(dataset, i, read_images)
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(_ItemChecks(dataset, read_images), batch_size=None,  # type: ignore[arg-type]
                        sampler=range(total), num_workers=workers, collate_fn=_as_is)
    yield from loader


def check_dataset(dataset_or_spec: Any, read_images: bool = True, max_images: int | None = None,
                  progress: Callable[[int, int], None] | None = None, workers: int = 0) -> CheckReport:
    """Validate every image of a dataset (or of the spec `{"format", "root", "split", ...options}`).

    read_images: decode every image fully (catches truncated files); False reads headers only.
    max_images: check only the first images (a quick look). progress(done, total) is called per image.
    workers: check in that many worker processes (0: in this one); the report is the same.
    """
    if isinstance(dataset_or_spec, Mapping):
        label = f"{dataset_or_spec.get('format') or dataset_or_spec.get('name')} at {dataset_or_spec.get('root', '.')}"
        try:
            dataset = _build(dataset_or_spec)
        except (DatasetError, ConfigError, OSError) as e:
            return CheckReport(label, errors=[str(e)])
    else:
        dataset = dataset_or_spec
    report = CheckReport(getattr(dataset, "json_name", None) or type(dataset).__name__)
    report.errors += list(getattr(dataset, "index_errors", []))
    report.warnings += list(getattr(dataset, "index_warnings", []))
    total = len(dataset) if max_images is None else min(len(dataset), max_images)
    labels, n_bad, n_empty = [], 0, 0
    for i, item in enumerate(_item_checks(dataset, total, read_images, workers)):
        report.errors += item.errors
        report.warnings += item.warnings
        n_bad += bool(item.errors)
        n_empty += not item.errors and item.labels.size == 0
        labels.append(np.asarray(item.labels, dtype=np.int64))
        if progress is not None:
            progress(i + 1, total)
    names = list(dataset.class_names)
    all_labels = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
    per_class = np.bincount(all_labels[(all_labels >= 0) & (all_labels < len(names))], minlength=len(names))
    is_stuff = np.isin(np.arange(len(names)), list(dataset.stuff_classes))
    report.counts = {
        "images": total, "images_with_errors": n_bad, "images_empty": n_empty,
        "segments": int(per_class.sum()), "things": int(per_class[~is_stuff].sum()),
        "stuff": int(per_class[is_stuff].sum()),
        "segments_per_class": {name: int(n) for name, n in zip(names, per_class)},
    }
    if len(dataset) == 0:
        report.errors.append(f"{report.dataset}: no usable images found")
    unseen = [n for n, k in zip(names, per_class) if k == 0]
    if unseen and total:
        shown = ", ".join(unseen[:10]) + (", ..." if len(unseen) > 10 else "")
        report.warnings.append(f"{len(unseen)} of {len(names)} classes never seen: {shown}")
    log.debug("checked %d images of %s: %d errors, %d warnings", total, report.dataset,
             len(report.errors), len(report.warnings))
    return report
