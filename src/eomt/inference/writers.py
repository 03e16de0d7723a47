"""The result files of `eomt predict`, one writer per task: `write` an image's result, then `finish`;
`write_predictions` runs a predictor over the inputs into a writer.

Per image `<stem>_overlay.png`, plus per task:
- panoptic: `<stem>_panoptic.png` (COCO panoptic colours, `formats.id_to_rgb`) and its entry in
  `panoptic.json` (COCO panoptic);
- instance: entries in `instances.json` (COCO results, RLE masks);
- semantic: `<stem>_semantic.png` (class-index label map).
Every finished image adds its line to `results.jsonl` after its files are in place
(`eomt.inference.result_log`), so a killed run keeps its work; `finish` merges the lines of this
run's inputs into the task's COCO document. Category ids: `category_ids` (class index -> dataset id),
else the class index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Iterator, Sequence, Union

from torch import Tensor

from eomt import files
from eomt.errors import OptionError
from eomt.inference import formats
from eomt.inference.io import ImageReadError, read_image, write_json, write_png
from eomt.inference.predictor import Predictor
from eomt.inference.result_log import ResultLog, merge
from eomt.inference.visualize import overlay
from eomt.structures import InstanceResult, PanopticResult, SemanticResult

Result = Union[PanopticResult, InstanceResult, SemanticResult]


class ResultWriter:
    """The files of one task's results in `out`, for the inputs `sources` (paths, in input order).

    stems: the output name of each input (unique); ids: (image id, file_name) of each input;
    settings: what makes a line reusable by a resumed run (model, task, options: JSON values);
    resume: keep the lines of an earlier run in `out` (else `results.jsonl` starts empty). The
    folder is created, and what the atomic writes of a killed run left in it is removed.
    """

    task = ""
    merged_name: str | None = None  # the COCO document `finish` writes, if the task has one

    def __init__(
        self,
        out: Path,
        sources: Sequence[Path],
        stems: Sequence[str],
        ids: Sequence[tuple[int, str]],
        settings: dict[str, Any],
        class_names: Sequence[str],
        *,
        num_classes: int,
        stuff_classes: Sequence[int] = (),
        category_ids: Sequence[int] | None = None,
        vis_threshold: float = 0.5,
        resume: bool = False,
    ) -> None:
        self.out = Path(out)
        self.sources, self.stems, self.ids = [str(s) for s in sources], list(stems), list(ids)
        self.settings = settings
        self.class_names, self.num_classes = list(class_names), num_classes
        self.stuff_classes, self.category_ids = list(stuff_classes), category_ids
        self.vis_threshold = vis_threshold
        self.out.mkdir(parents=True, exist_ok=True)
        files.clean_stale_temps(self.out)
        self.log = ResultLog(self.out, resume=resume)

    def done(self, index: int) -> bool:
        """Whether input `index` has a line of these settings and all its files (a resumed run)."""
        return self.log.done(self.stems[index], self.sources[index], self.settings, self.out)

    def write(self, index: int, image: Tensor, result: Result) -> list[Path]:
        """The files of input `index` (image (3, H, W) uint8 as read), then its line; the paths written."""
        stem, (image_id, file_name) = self.stems[index], self.ids[index]
        names = [f"{stem}_overlay.png"]
        written = [write_png(self.out / names[0], self._overlay(image, result))]
        record: dict[str, Any] = {"stem": stem, "source": self.sources[index], "file_name": file_name,
                                  "image_id": image_id, "height": int(image.shape[-2]),
                                  "width": int(image.shape[-1]), "task": self.task, "settings": self.settings}
        written += self._task_files(stem, image_id, result, record, names)
        self.log.append({**record, "outputs": names})  # last: a line means its files are complete
        return written

    def finish(self, failed: Collection[int] = ()) -> list[Path]:
        """The task's COCO document of this run's inputs (those in `failed` left out), merged from
        their lines in input order; the paths written."""
        if self.merged_name is None:
            return []
        bad = set(failed)
        records = [None if i in bad else self.log.records.get(s) for i, s in enumerate(self.stems)]
        categories = formats.coco_categories(self.class_names, self.stuff_classes, self.category_ids)
        return [write_json(self.out / self.merged_name, merge(records, self.ids, self.task, categories))]

    def _overlay(self, image: Tensor, result: Result) -> Any:
        return overlay(image, result, self.class_names)

    def _task_files(self, stem: str, image_id: int, result: Result, record: dict[str, Any],
                    names: list[str]) -> list[Path]:
        """Write the task's own files of one image, adding their names to `names` and the task's
        fields to `record`; the paths written."""
        raise NotImplementedError


class PanopticWriter(ResultWriter):
    """`<stem>_panoptic.png` per image, its segments in the line, `panoptic.json` at the end."""

    task = "panoptic"
    merged_name = "panoptic.json"

    def _task_files(self, stem: str, image_id: int, result: Result, record: dict[str, Any],
                    names: list[str]) -> list[Path]:
        names.append(f"{stem}_panoptic.png")
        path = write_png(self.out / names[-1], formats.id_to_rgb(result.segmentation))
        entry = formats.panoptic_to_coco(result, image_id, names[-1], self.category_ids)
        record.update(png=names[-1], segments_info=entry["segments_info"])
        return [path]


class InstanceWriter(ResultWriter):
    """The instances (COCO results, RLE masks) in the line, `instances.json` at the end; the overlay
    draws instances scoring at least `vis_threshold`."""

    task = "instance"
    merged_name = "instances.json"

    def _overlay(self, image: Tensor, result: Result) -> Any:
        return overlay(image, result, self.class_names, threshold=self.vis_threshold)

    def _task_files(self, stem: str, image_id: int, result: Result, record: dict[str, Any],
                    names: list[str]) -> list[Path]:
        record["instances"] = formats.instances_to_coco(result, image_id, self.category_ids)
        return []


class SemanticWriter(ResultWriter):
    """`<stem>_semantic.png` (class indices, uint8 or uint16 beyond 256 classes) per image."""

    task = "semantic"

    def _task_files(self, stem: str, image_id: int, result: Result, record: dict[str, Any],
                    names: list[str]) -> list[Path]:
        names.append(f"{stem}_semantic.png")
        return [write_png(self.out / names[-1], formats.semantic_to_png_array(result, self.num_classes))]


WRITERS: dict[str, type[ResultWriter]] = {"panoptic": PanopticWriter, "instance": InstanceWriter,
                                          "semantic": SemanticWriter}


def make_writer(task: str, out: Path, sources: Sequence[Path], stems: Sequence[str],
                ids: Sequence[tuple[int, str]], settings: dict[str, Any], class_names: Sequence[str],
                **options: Any) -> ResultWriter:
    """The writer of `task` (see `ResultWriter` for the arguments and `options`)."""
    if task not in WRITERS:
        raise OptionError(f"task: no result writer for {task!r} (expected one of: {', '.join(WRITERS)})")
    return WRITERS[task](out, sources, stems, ids, settings, class_names, **options)


@dataclass
class Outcome:
    """What became of input `index`: its files `written`, or the `error` that stopped it (unreadable
    image, files that could not be written), or `skipped` (done by an earlier run, when resuming)."""

    index: int
    written: list[Path] = field(default_factory=list)
    error: str | None = None
    skipped: bool = False


def write_predictions(predictor: Predictor, writer: ResultWriter, max_pixels: int | None,
                      resume: bool = False) -> Iterator[Outcome]:
    """Predict the writer's inputs `predictor.batch_size` at a time and write their files: one
    `Outcome` per input, as each is done (an unreadable image at once, the others batch by batch,
    in input order). An image that cannot be read or whose files cannot be written is reported,
    not raised; the others go on. With `resume`, inputs the writer finds done are skipped. Call
    `writer.finish` after the last one."""
    pending: list[tuple[int, Tensor]] = []

    def flush() -> Iterator[Outcome]:
        predictions = predictor.predict_tensors([image for _, image in pending])
        for (index, image), result in zip(pending, predictions):
            try:
                yield Outcome(index, writer.write(index, image, result))
            except OSError as e:
                yield Outcome(index, error=f"{writer.sources[index]}: cannot write results: {e}")
        pending.clear()

    for index, source in enumerate(writer.sources):
        if resume and writer.done(index):
            yield Outcome(index, skipped=True)
            continue
        try:
            pending.append((index, read_image(source, max_pixels)))
        except (ImageReadError, OSError) as e:
            yield Outcome(index, error=f"skipped {e}")
            continue
        if len(pending) >= predictor.batch_size:
            yield from flush()
    if pending:
        yield from flush()
