"""The results log of `eomt predict`, which survives a kill: a line per image as it is done, one COCO
file at the end, the dataset's image ids. The per-task files themselves: `eomt.inference.writers`.

- `results.jsonl`: one JSON line per finished image, appended after the image's PNGs are in place
  (so a line means its files are complete): {"stem", "source", "file_name", "image_id", "height",
  "width", "task", "settings", "outputs", and "segments_info" (panoptic) or "instances" (instance)}.
  A rerun with `--skip-existing` passes over every image whose line (of the same model, task and
  options) and files exist; a line cut short by a kill is dropped (that image is done again).
- `merge`: the lines of this run's inputs, in input order, as `panoptic.json` (COCO panoptic:
  "images", "annotations", "categories") or `instances.json` (COCO results: a list; the file name
  beside each `image_id`). Image ids are taken afresh from this run's inputs, never from old lines.
- Image ids: from the dataset's JSON (`--images-json`: its "images" matched by file_name), else
  1..N in the sorted input order, the same for every rerun on the same inputs.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

from eomt import files
from eomt.errors import OptionError

log = logging.getLogger(__name__)

RESULTS_NAME = "results.jsonl"


def check_out_folder(out: Path, inputs: Sequence[str]) -> None:
    """Refuse an output folder that is an input folder or inside one (a rerun would read its own
    outputs as inputs: `*_overlay_overlay.png`). For a glob, its folder part is the input folder,
    and a folder inside it counts only for a recursive (`**`) pattern, the one that would look there."""
    import glob

    target = out.resolve()
    for item in inputs:
        path = Path(item)
        deep = True  # whether the input reaches into folders below `folder`
        if path.is_dir():
            folder = path
        elif not path.is_file() and glob.has_magic(item):
            parts = []
            for part in path.parts:
                if glob.has_magic(part):
                    break
                parts.append(part)
            folder = Path(*parts) if parts else Path(".")
            deep = "**" in item
        else:
            continue
        folder = folder.resolve()
        if target == folder or (deep and folder in target.parents):
            where = "is" if target == folder else "is inside"
            raise OptionError(f"--out: {out} {where} the input folder {item}; its results would be read as "
                             "inputs by the next run. Choose a folder outside it")


def dataset_image_ids(paths: Sequence[Path], images_json: Path) -> list[tuple[int, str]]:
    """(image id, file_name) of each input from a COCO-style JSON's "images" list, matched by
    file_name (the input path ends with it: `val2017/1.jpg` or `1.jpg`). Raises ValueError naming
    the JSON and the inputs it does not list, or lists twice."""
    try:
        doc = json.loads(images_json.read_text(encoding="utf-8"))
        images = doc["images"]
        entries = [(int(im["id"]), str(im["file_name"])) for im in images]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise OptionError(f"--images-json {images_json}: cannot read its images (id, file_name): {e}") from None
    by_name: dict[str, list[tuple[int, str]]] = {}
    for image_id, name in entries:
        by_name.setdefault(Path(name).name, []).append((image_id, name))
    out, missing, ambiguous = [], [], []
    for path in paths:
        parts = path.resolve().parts
        found = [(i, n) for i, n in by_name.get(path.name, []) if parts[-len(Path(n).parts):] == Path(n).parts]
        if len(found) == 1:
            out.append(found[0])
        else:
            (missing if not found else ambiguous).append(str(path))
    if missing:
        raise OptionError(f"--images-json {images_json}: {len(missing)} input(s) not among its images "
                         f"(matched by file_name), e.g. {', '.join(missing[:3])}")
    if ambiguous:
        raise OptionError(f"--images-json {images_json}: file_name of {', '.join(ambiguous[:3])} matches several "
                         "images; give their folder in file_name")
    return out


def image_ids(paths: Sequence[Path], images_json: Path | None = None) -> list[tuple[int, str]]:
    """(image id, file_name) per input: the dataset's (`dataset_image_ids`) or (1..N, the path)."""
    if images_json is not None:
        return dataset_image_ids(paths, images_json)
    return [(i, str(p)) for i, p in enumerate(paths, start=1)]


class ResultLog:
    """`results.jsonl` in `out`: read (resume) or started empty, then one line appended per image."""

    def __init__(self, out: Path, resume: bool) -> None:
        self.path = out / RESULTS_NAME
        self.records: dict[str, dict[str, Any]] = {}
        if resume and self.path.is_file():
            lines = self.path.read_text(encoding="utf-8").splitlines()
            for line in lines:
                try:
                    record = json.loads(line)
                    self.records[record["stem"]] = record
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a kill: that image is done again
            kept = [json.dumps(r, allow_nan=False) for r in self.records.values()]
            if kept != lines:  # drop the broken tail, so that new lines start on a line of their own
                files.write_atomic(self.path, "".join(line + "\n" for line in kept))
        else:
            if self.path.is_file() and self.path.stat().st_size:
                earlier = sum(1 for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip())
                log.warning("%s: replacing the results of %d image(s) of an earlier run in this folder "
                            "(--skip-existing keeps them and adds to them)", self.path, earlier)
            files.write_atomic(self.path, "")

    def done(self, stem: str, source: str, settings: dict[str, Any], out: Path) -> bool:
        """True when `stem` has a line of this source made with these settings (model, task,
        thresholds: JSON values), and every file it names exists."""
        r = self.records.get(stem)
        return (r is not None and r.get("source") == source and r.get("settings") == settings
                and all((out / name).is_file() for name in r.get("outputs", [])))

    def append(self, record: dict[str, Any]) -> None:
        """Add one image's line, written through to the disk before the next image starts."""
        line = files.json_text(record, indent=None)  # one line, ends with "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.records[record["stem"]] = json.loads(line)


def merge(
    records: Sequence[dict[str, Any]], ids: Sequence[tuple[int, str]], task: str,
    categories: list[dict[str, Any]],
) -> Any:
    """The COCO document of `records` (one per input, in input order, None for failed inputs) with
    this run's image ids: panoptic -> {"images", "annotations", "categories"}, instance -> list."""
    if task == "panoptic":
        images, annotations = [], []
        for record, (image_id, file_name) in zip(records, ids):
            if record is None:
                continue
            images.append({"id": image_id, "file_name": file_name, "height": record["height"],
                           "width": record["width"]})
            annotations.append({"image_id": image_id, "file_name": record["png"],
                                "segments_info": record["segments_info"], "source": record["source"]})
        return {"images": images, "annotations": annotations, "categories": categories}
    entries = []
    for record, (image_id, file_name) in zip(records, ids):
        for e in record["instances"] if record is not None else []:
            entries.append({**e, "image_id": image_id, "file_name": file_name})
    return entries
