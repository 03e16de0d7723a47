"""COCO-format datasets, generic over where the files lie (a zip, a zip inside a zip, a folder).

`PanopticJsonDataset`: a COCO panoptic JSON (`segments_info` per image) plus one RGB id PNG per
image (`id = R + 256 G + 256^2 B`, `eomt.images.rgb_to_id`). `InstanceJsonDataset`: a COCO instance
JSON with polygons or RLEs per object, crowd regions kept with a flag. Both map the JSON's category
ids to contiguous classes through `category_ids`, record indexing problems (unknown categories,
repeated segment ids, annotations of unlisted images) in `index_errors`, and skip images without a
usable segment. The official archives (`eomt.data.coco`) and users' own files (`eomt.data.user`)
are thin constructors on these two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils

from eomt.data.base import (
    ItemCheck, SegmentationDataset, Transform, annotation_orientation, target_from_ids, turned_note,
)
from eomt.data.sources import DatasetError, ImageFrame, Source, join, natural_key
from eomt.images import orient, rgb_to_id
from eomt.structures import Target


def _summarise(what: str, names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
    return f"{len(names)} {what}: {shown}"


@dataclass
class _PanopticRecord:
    image: str  # image file name as in the JSON
    png: str  # PNG file name as in the JSON
    ids: np.ndarray  # (S,) int64 segment ids of segments_info
    labels: np.ndarray  # (S,) int64 contiguous class, -1 for an unknown category (dropped)
    is_crowd: np.ndarray  # (S,) bool


def dataset_ids(category_ids: Mapping[int, int]) -> tuple[int, ...]:
    """The dataset's category id of each contiguous class (the inverse of `category_ids`)."""
    return tuple(int(cid) for cid, _ in sorted(category_ids.items(), key=lambda kv: kv[1]))


class PanopticJsonDataset(SegmentationDataset):
    """COCO panoptic format: one RGB id PNG per image plus `segments_info` in a JSON.

    `category_ids` maps JSON category ids to contiguous ids. Images with no (known) segment are
    skipped; unknown categories and duplicated segment ids are recorded in `index_errors`.
    """

    def __init__(self, annotations: Mapping[str, Any], json_name: str, images: Source, image_folder: str,
                 masks: Source, mask_folder: str, category_ids: Mapping[int, int],
                 class_names: Sequence[str], stuff_classes: Sequence[int], transform: Transform | None = None,
                 skip_missing_images: bool = False) -> None:
        super().__init__(class_names, stuff_classes, transform)
        self.images, self.image_folder = images, image_folder
        self.masks, self.mask_folder = masks, mask_folder
        self.json_name = json_name
        self.category_ids = dataset_ids(category_ids)
        self.records = self._index(annotations, dict(category_ids), skip_missing_images)

    def _index(self, js: Mapping[str, Any], cats: dict[int, int], skip_missing: bool) -> list[_PanopticRecord]:
        try:
            files = {img["id"]: img["file_name"] for img in js["images"]}
            anns = list(js["annotations"])
        except (KeyError, TypeError) as e:
            raise DatasetError(f"{self.json_name}: not a COCO panoptic JSON (missing {e})") from None
        records, empty = [], []
        for ann in anns:
            image = files.get(ann.get("image_id"))
            if image is None:
                self.index_errors.append(
                    f"{self.json_name}: annotation {ann.get('file_name')} has image_id {ann.get('image_id')} "
                    "not listed in 'images'")
                continue
            segs = ann.get("segments_info", [])
            ids = np.array([s["id"] for s in segs], dtype=np.int64)
            cat_ids = [s["category_id"] for s in segs]
            labels = np.array([cats.get(c, -1) for c in cat_ids], dtype=np.int64)
            crowd = np.array([bool(s.get("iscrowd", 0)) for s in segs], dtype=bool)
            unknown = sorted({c for c, lab in zip(cat_ids, labels) if lab < 0})
            if unknown:
                self.index_errors.append(
                    f"{self.json_name}: {image}: unknown category_id {unknown} (not in the categories)")
            uniq, counts = np.unique(ids, return_counts=True)
            if (counts > 1).any():
                self.index_errors.append(
                    f"{self.json_name}: {image}: segment ids {uniq[counts > 1].tolist()} repeated in segments_info")
            if not (labels >= 0).any():
                empty.append(image)
                continue
            if skip_missing and not self.images.exists(join(self.image_folder, image)):
                continue
            records.append(_PanopticRecord(image, ann["file_name"], ids, labels, crowd))
        no_ann = len(files) - len(anns)
        if empty:
            self.index_warnings.append(_summarise(f"images in {self.json_name} without segments (skipped)", empty))
        if no_ann > 0:
            self.index_warnings.append(f"{no_ann} images in {self.json_name} without an annotation entry (skipped)")
        return sorted(records, key=lambda r: natural_key(r.image))

    def __len__(self) -> int:
        return len(self.records)

    def item_name(self, index: int) -> str:
        return self.images.where(join(self.image_folder, self.records[index].image))

    def _ids(self, index: int) -> np.ndarray:
        member = join(self.mask_folder, self.records[index].png)
        png = self.masks.read_png(member)
        if png.ndim != 3 or png.shape[2] < 3:
            raise DatasetError(f"{self.masks.where(member)}: expected an RGB panoptic PNG, found shape {png.shape}")
        return rgb_to_id(png)  # (H, W) segment ids

    def _orientation(self, index: int, ids: np.ndarray, frame: ImageFrame) -> int:
        r = self.records[index]
        return annotation_orientation(ids.shape[:2], frame, self.masks.where(join(self.mask_folder, r.png)),
                                      self.images.where(join(self.image_folder, r.image)))

    def load(self, index: int) -> tuple[np.ndarray, Target]:
        r = self.records[index]
        image, frame = self.images.read_image_framed(join(self.image_folder, r.image))
        ids = self._ids(index)
        ids = orient(ids, self._orientation(index, ids, frame))  # (H, W) on the displayed image
        known = r.labels >= 0
        return image, target_from_ids(ids, r.ids[known], r.labels[known], r.is_crowd[known])

    def check_item(self, index: int, read_images: bool = True) -> ItemCheck:
        """Image readable, PNG readable, PNG ids == segments_info ids, PNG on the image's frame."""
        r, out = self.records[index], ItemCheck()
        png_name = self.masks.where(join(self.mask_folder, r.png))
        try:
            frame = self.images.image_frame(join(self.image_folder, r.image), decode=read_images)
            ids = self._ids(index)
            orientation = self._orientation(index, ids, frame)
        except DatasetError as e:
            out.errors.append(str(e))
            return out
        present = np.unique(ids)
        extra = np.setdiff1d(present[present != 0], r.ids)
        if extra.size:
            out.errors.append(f"{png_name}: ids {extra.tolist()[:10]} in the PNG are not in segments_info")
        missing = np.setdiff1d(r.ids, present)
        if missing.size:
            out.errors.append(f"{self.json_name}: {r.image}: segments_info ids {missing.tolist()[:10]} "
                              f"not found in {png_name}")
        if orientation != 1:
            out.warnings.append(turned_note(png_name, self.item_name(index), orientation))
        out.labels = r.labels[(r.labels >= 0) & np.isin(r.ids, present)]
        return out


@dataclass
class _InstanceRecord:
    image: str
    height: int
    width: int
    segmentations: list[Any]  # polygons (list of lists) or RLE dicts, as in the JSON
    labels: np.ndarray  # (N,) int64
    is_crowd: np.ndarray  # (N,) bool


def _segmentation_problem(seg: Any, size: tuple[int, int]) -> str | None:
    """Why a COCO `segmentation` cannot be decoded on an image of `size` (H, W), or None when it can."""
    if isinstance(seg, dict):
        if "counts" not in seg or "size" not in seg:
            return "RLE without 'counts'/'size'"
        if list(seg["size"]) != list(size):
            return f"RLE size {list(seg['size'])} differs from the image's height/width {list(size)}"
        return None
    if isinstance(seg, list) and not seg:
        return "empty segmentation"
    if isinstance(seg, list) and all(isinstance(p, list) for p in seg):
        bad = [len(p) for p in seg if len(p) < 6 or len(p) % 2]
        return f"polygon with {bad[0]} coordinates (need an even number >= 6)" if bad else None
    return f"unsupported segmentation {type(seg).__name__}"


def decode_segmentations(segs: Sequence[Any], height: int, width: int) -> torch.Tensor:
    """COCO polygons / RLEs -> (N, H, W) bool masks (polygons of one object are merged)."""
    rles = []
    for seg in segs:
        if isinstance(seg, dict) and isinstance(seg["counts"], (str, bytes)):  # compressed RLE
            counts = seg["counts"].encode() if isinstance(seg["counts"], str) else seg["counts"]
            rles.append({"size": list(seg["size"]), "counts": counts})
        elif isinstance(seg, dict):  # uncompressed RLE (crowd regions)
            rles.append(mask_utils.frPyObjects(seg, height, width))
        else:
            rles.append(mask_utils.merge(mask_utils.frPyObjects(seg, height, width)))
    if not rles:
        return torch.zeros(0, height, width, dtype=torch.bool)
    masks = mask_utils.decode(rles)  # (H, W, N) uint8, Fortran order
    return torch.from_numpy(np.ascontiguousarray(masks.transpose(2, 0, 1))).bool()  # (N, H, W)


class InstanceJsonDataset(SegmentationDataset):
    """COCO instance format: polygons / RLE per object in a JSON, crowd regions kept with a flag.

    Images without a (valid, known-category) annotation are skipped.
    """

    def __init__(self, annotations: Mapping[str, Any], json_name: str, images: Source, image_folder: str,
                 category_ids: Mapping[int, int], class_names: Sequence[str], transform: Transform | None = None,
                 skip_missing_images: bool = False) -> None:
        super().__init__(class_names, (), transform)
        self.images, self.image_folder, self.json_name = images, image_folder, json_name
        self.category_ids = dataset_ids(category_ids)
        self.records = self._index(annotations, dict(category_ids), skip_missing_images)

    def _index(self, js: Mapping[str, Any], cats: dict[int, int], skip_missing: bool) -> list[_InstanceRecord]:
        try:
            imgs = {img["id"]: img for img in js["images"]}
            anns = list(js["annotations"])
        except (KeyError, TypeError) as e:
            raise DatasetError(f"{self.json_name}: not a COCO instance JSON (missing {e})") from None
        per_image: dict[Any, list[tuple[Any, int, bool]]] = {}
        for ann in anns:
            img = imgs.get(ann.get("image_id"))
            where = f"{self.json_name}: annotation {ann.get('id')}"
            if img is None:
                self.index_errors.append(f"{where} has image_id {ann.get('image_id')} not listed in 'images'")
                continue
            label = cats.get(ann.get("category_id"), -1)
            if label < 0:
                self.index_errors.append(
                    f"{where} ({img['file_name']}): unknown category_id {ann.get('category_id')}")
                continue
            problem = _segmentation_problem(ann.get("segmentation"), (img.get("height"), img.get("width")))
            if problem:
                self.index_errors.append(f"{where} ({img['file_name']}): {problem}")
                continue
            per_image.setdefault(img["id"], []).append((ann["segmentation"], label, bool(ann.get("iscrowd", 0))))
        records = []
        for image_id, objs in per_image.items():
            img = imgs[image_id]
            if skip_missing and not self.images.exists(join(self.image_folder, img["file_name"])):
                continue
            records.append(_InstanceRecord(
                img["file_name"], int(img["height"]), int(img["width"]), [o[0] for o in objs],
                np.array([o[1] for o in objs], dtype=np.int64), np.array([o[2] for o in objs], dtype=bool)))
        empty = [img["file_name"] for i, img in imgs.items() if i not in per_image]
        if empty:
            self.index_warnings.append(_summarise(f"images in {self.json_name} without annotations (skipped)", empty))
        return sorted(records, key=lambda r: natural_key(r.image))

    def __len__(self) -> int:
        return len(self.records)

    def item_name(self, index: int) -> str:
        return self.images.where(join(self.image_folder, self.records[index].image))

    def load(self, index: int) -> tuple[np.ndarray, Target]:
        r = self.records[index]
        image, frame = self.images.read_image_framed(join(self.image_folder, r.image))
        orientation = self._orientation(index, frame)
        try:
            masks = decode_segmentations(r.segmentations, r.height, r.width)  # (N, h, w) as in the JSON
        except Exception as e:  # pycocotools raises bare exceptions on malformed input
            raise DatasetError(f"{self.json_name}: {r.image}: cannot decode a segmentation ({e})") from None
        if orientation != 1:  # drawn on the stored pixels: turn with the image
            turned = orient(masks.numpy().transpose(1, 2, 0), orientation)  # (H, W, N)
            masks = torch.from_numpy(np.ascontiguousarray(turned.transpose(2, 0, 1)))  # (N, H, W)
        return image, Target(masks, torch.from_numpy(r.labels), torch.from_numpy(r.is_crowd))

    def _orientation(self, index: int, frame: ImageFrame) -> int:
        r = self.records[index]
        return annotation_orientation((r.height, r.width), frame, f"{self.json_name}: {r.image} (height/width)",
                                      self.item_name(index))

    def check_item(self, index: int, read_images: bool = True) -> ItemCheck:
        """Image present and readable, the JSON's height/width on one of its frames."""
        r, out = self.records[index], ItemCheck(labels=self.records[index].labels)
        try:
            frame = self.images.image_frame(join(self.image_folder, r.image), decode=read_images)
            orientation = self._orientation(index, frame)
        except DatasetError as e:
            out.errors.append(str(e))
            return out
        if orientation != 1:
            out.warnings.append(turned_note(f"{self.json_name}: {r.image}", self.item_name(index), orientation))
        return out
