"""Large images cut into overlapping tiles at the model's own scale, predicted, and joined.

Shrinking a slide, an aerial photo or a document scan to the network's input size makes small
objects vanish; tiling keeps them at the scale the model was trained for. Each tile is an
ordinary image to the predictor: it goes through the task's usual preprocessing (resize to the
input size: none when the tile is the input size) and post-processing, and the tile results are
joined at the original size.

Tiles are `tile x tile` pixels (smaller only where the image is), `tile - overlap` apart along each
axis; the last tile of a row or column ends at the image border. Each tile owns a *core*: along an
axis, the border between the cores of neighbouring tiles lies in the middle of their overlap, and
the cores of the first and last tiles reach the image border. The cores partition the image, and
away from the image border a core keeps `overlap / 2` pixels from its tile's edge, where the
network saw too little context.

The rule that joins the tiles:
- things (panoptic thing segments; every instance of the instance task): a tile's segment keeps
  only its pixels inside the tile's core. Two segments of overlapping tiles are the same thing when
  they have the same class and, over the rectangle both tiles cover, their IoU is at least
  `merge_iou` (0.5); "same thing" is transitive (union-find over all tiles). A joined segment is the
  union of its pieces' core pixels, its score their core-area-weighted mean. A thing crossing a
  seam comes out whole when the tiles agree on it where they overlap (a thing that fits in the
  overlap is seen whole by both); two things of one class that touch across a seam stay two,
  because their masks do not overlap.
- panoptic stuff: stuff segments of one class are one segment over the whole image (as the
  untiled post-processing merges stuff queries), each pixel from the tile whose core holds it.
- semantic: the per-pixel class scores of every tile covering a pixel are averaged with weights
  that ramp linearly from the tile's inner edges over `overlap` pixels (no ramp at the image
  border), then the label is the best class.
- instance: after joining, the `top_k` best instances of the whole image are kept.

The network and the post-processing work on one tile at a time (`batch_size` tiles per forward
pass), never on the whole image. A tile's result is reduced at once to its core pieces (boolean
crops, at most one bit per image pixel per kept segment) and to the masks it shares with tiles
still to come; finished instances beyond the `top_k` best are dropped as the tiles go; semantic
scores are held for one row of tiles (C x tile x W floats), and its rows are labelled as soon as
no later tile covers them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, Union

import torch
from torch import Tensor

from eomt.inference.postprocess import use_rle
from eomt.structures import InstanceResult, Masks, PanopticResult, RLEMasks, SemanticResult, dense_masks

Result = Union[PanopticResult, InstanceResult, SemanticResult]
MERGE_IOU = 0.5


@dataclass(frozen=True)
class Tile:
    """One tile: pixels [y0, y1) x [x0, x1) of the image; its core [cy0, cy1) x [cx0, cx1)."""

    row: int
    y0: int
    y1: int
    x0: int
    x1: int
    cy0: int
    cy1: int
    cx0: int
    cx1: int


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of `tile` pixels, `tile - overlap` apart, the last ending at `length`."""
    if length <= tile:
        return [0]
    return list(range(0, length - tile, tile - overlap)) + [length - tile]


def _axis(length: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(start, end, core start, core end) of the tiles along one axis."""
    starts = tile_starts(length, tile, overlap)
    ends = [min(s + tile, length) for s in starts]
    # Core borders in the middle of each overlap; the outer cores reach the image border.
    bounds = [0] + [(starts[i] + ends[i - 1]) // 2 for i in range(1, len(starts))] + [length]
    return [(s, e, bounds[i], bounds[i + 1]) for i, (s, e) in enumerate(zip(starts, ends))]


def make_tiles(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """The tiles of an (H, W) image, row after row."""
    return [
        Tile(r, y0, y1, x0, x1, cy0, cy1, cx0, cx1)
        for r, (y0, y1, cy0, cy1) in enumerate(_axis(height, tile, overlap))
        for (x0, x1, cx0, cx1) in _axis(width, tile, overlap)
    ]


def _shared(a: Tile, b: Tile) -> tuple[int, int, int, int] | None:
    """The rectangle (y0, y1, x0, x1) two tiles both cover, in image pixels; None if empty."""
    y0, y1, x0, x1 = max(a.y0, b.y0), min(a.y1, b.y1), max(a.x0, b.x0), min(a.x1, b.x1)
    return (y0, y1, x0, x1) if y0 < y1 and x0 < x1 else None


def predict_tiled(
    image: Tensor,
    run: Callable[[list[Tensor]], list[Result]],
    task: str,
    tile: int,
    overlap: int,
    batch_size: int = 1,
    stuff_classes: Sequence[int] = (),
    top_k: int = 100,
    merge_iou: float = MERGE_IOU,
    mask_format: str = "auto",
) -> Result:
    """The result of one (3, H, W) image predicted tile by tile (see the module docstring).

    run: the untiled predictor on a list of (3, h, w) tiles, one result per tile at the tile's
    size; for "semantic" each result must carry its class scores (C, h, w). mask_format: of the
    joined instance masks, as `eomt.inference.postprocess.instance` has it.
    """
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"tile_overlap: {overlap} must be >= 0 and smaller than the tile ({tile}, >= 1)")
    h, w = int(image.shape[-2]), int(image.shape[-1])
    tiles = make_tiles(h, w, tile, overlap)

    def results():
        for start in range(0, len(tiles), batch_size):
            chunk = tiles[start : start + batch_size]
            crops = [image[:, t.y0 : t.y1, t.x0 : t.x1] for t in chunk]  # views, no copies
            for j, (t, result) in enumerate(zip(chunk, run(crops))):
                yield start + j, t, result

    if task == "semantic":
        return _semantic(results(), tiles, (h, w), overlap, image.device)
    return _Joiner(tiles, merge_iou).join(results(), task, (h, w), stuff_classes, top_k, image.device, mask_format)


def _ramp(n: int, ramp: int, start: bool, end: bool, device: torch.device) -> Tensor:
    """(n,) weights rising linearly over `ramp` pixels at each end flagged (an inner edge), else 1."""
    pos = torch.arange(n, device=device, dtype=torch.float32) + 0.5
    weight = torch.ones(n, device=device)
    if ramp > 0 and start:
        weight = torch.minimum(weight, pos / ramp)
    if ramp > 0 and end:
        weight = torch.minimum(weight, (n - pos) / ramp)
    return weight


def _semantic(results, tiles: list[Tile], size: tuple[int, int], overlap: int, device: torch.device) -> SemanticResult:
    """Blend per-tile class scores with ramp weights, one row of tiles in memory at a time."""
    h, w = size
    labels = torch.empty(h, w, dtype=torch.long, device=device)
    rows = sorted({(t.row, t.y0, t.y1) for t in tiles})
    # (C, y1 - y0, W) weighted score sums of the current row of tiles. The weighted average would
    # divide them by the weight sum, which is positive everywhere: the best class is the same.
    band: Tensor | None = None
    current = -1

    def finish(until: int) -> None:
        """Labels of the band's rows above image row `until`, which no later tile covers."""
        y0 = rows[current][1]
        done = until - y0
        labels[y0:until] = band[:, :done].argmax(0)

    for _, t, result in results:
        if result.scores is None:
            raise ValueError("tiling: the semantic tile results carry no class scores")
        if t.row != current:
            _, y0, y1 = rows[t.row]
            if band is not None:
                finish(y0)
                keep = rows[current][2] - y0  # rows this band shares with the next one
                new = band.new_zeros(band.shape[0], y1 - y0, w)
                if keep > 0:
                    new[:, :keep] = band[:, -keep:]
                band = new
            else:
                band = torch.zeros(result.scores.shape[0], y1 - y0, w, device=device)
            current = t.row
        y0 = rows[current][1]
        wy = _ramp(t.y1 - t.y0, overlap, t.y0 > 0, t.y1 < h, device)
        wx = _ramp(t.x1 - t.x0, overlap, t.x0 > 0, t.x1 < w, device)
        weight = wy[:, None] * wx[None, :]  # (th, tw)
        band[:, t.y0 - y0 : t.y1 - y0, t.x0 : t.x1] += result.scores.to(device).float() * weight
    finish(h)
    return SemanticResult(labels)


@dataclass
class _Piece:
    """A tile segment's pixels inside the tile's core, cropped to their box (image coordinates)."""

    tile: int
    label: int
    score: float
    thing: bool
    area: int
    y0: int
    x0: int
    crop: Tensor | None  # (h, w) bool; None when the segment has no pixel in the core


def _extent(occupied: Tensor) -> Tensor:
    """(K, 2) [first, last + 1] of the True entries of each row of a (K, n) bool tensor."""
    n = occupied.shape[1]
    first = occupied.byte().argmax(1)  # the first maximum: the first True
    last = n - occupied.flip(1).byte().argmax(1)
    return torch.stack([first, last], 1)


class _Joiner:
    """Joins the thing and stuff segments of tiles into segments of the image (the module rule)."""

    def __init__(self, tiles: list[Tile], merge_iou: float) -> None:
        self.tiles = tiles
        self.merge_iou = merge_iou
        self.pieces: list[_Piece] = []
        self.parent: list[int] = []
        self.alive: set[int] = set()  # pieces not yet dropped by `prune`
        # Masks over the rectangle a tile shares with a later tile, until that one is done:
        # (earlier, later) -> (piece ids (K,), masks (K, P) bool, labels (K,)).
        self.pending: dict[tuple[int, int], tuple[Tensor, Tensor, Tensor]] = {}
        self.earlier: list[list[tuple[int, tuple[int, int, int, int]]]] = [[] for _ in tiles]
        self.later: list[list[tuple[int, tuple[int, int, int, int]]]] = [[] for _ in tiles]
        for j, b in enumerate(tiles):
            for i in range(j):
                shared = _shared(tiles[i], b)
                if shared is not None:
                    self.earlier[j].append((i, shared))
                    self.later[i].append((j, shared))
        self.remaining = [len(n) for n in self.later]  # later neighbours not yet added, per tile

    def _find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def add(self, index: int, masks: Tensor, labels: Tensor, scores: Tensor, thing: Tensor) -> None:
        """Tile `index`'s segments: masks (K, th, tw) bool, labels / scores / thing (K,)."""
        t = self.tiles[index]
        ids = torch.arange(len(self.pieces), len(self.pieces) + masks.shape[0], device=masks.device)
        thing_ids, thing_labels = ids[thing], labels[thing]

        def region(rect: tuple[int, int, int, int]) -> Tensor:
            y0, y1, x0, x1 = rect
            return masks[:, y0 - t.y0 : y1 - t.y0, x0 - t.x0 : x1 - t.x0].flatten(1)  # (K, P)

        # Pieces: the core pixels of every segment, cropped to their box.
        core = masks[:, t.cy0 - t.y0 : t.cy1 - t.y0, t.cx0 - t.x0 : t.cx1 - t.x0]  # (K, ch, cw)
        areas = core.flatten(1).sum(1).tolist()
        boxes = torch.cat([_extent(core.any(2)), _extent(core.any(1))], 1).tolist()  # (K, 4)
        for k, (label, score, is_thing, area, (a, b, c, d)) in enumerate(
            zip(labels.tolist(), scores.tolist(), thing.tolist(), areas, boxes)
        ):
            crop, y0, x0 = None, t.cy0, t.cx0
            if area:
                crop, y0, x0 = core[k, a:b, c:d].clone(), t.cy0 + a, t.cx0 + c
            self.alive.add(len(self.pieces))
            self.pieces.append(_Piece(index, label, score, is_thing, area, y0, x0, crop))
            self.parent.append(len(self.parent))

        # Same thing across a seam: same class and IoU >= merge_iou over the shared rectangle.
        for i, rect in self.earlier[index]:
            self.remaining[i] -= 1
            stored = self.pending.pop((i, index), None)
            if stored is None or not thing.any():
                continue
            ids_i, masks_i, labels_i = stored
            masks_j = region(rect)[thing]  # (K_j, P)
            inter = masks_i.float() @ masks_j.float().t()  # (K_i, K_j) shared pixels
            union = masks_i.sum(1)[:, None] + masks_j.sum(1)[None, :] - inter
            same = (inter >= self.merge_iou * union) & (inter > 0) & (labels_i[:, None] == thing_labels[None, :])
            a, b = same.nonzero().unbind(1)
            for p, q in zip(ids_i[a].tolist(), thing_ids[b].tolist()):
                self._union(p, q)
        for j, rect in self.later[index]:
            m = region(rect)[thing]
            present = m.any(1)
            if present.any():
                self.pending[(index, j)] = (thing_ids[present], m[present], thing_labels[present])

    def prune(self, keep: int) -> None:
        """Drop the finished segments that cannot be among the `keep` best (instance task).

        A segment is finished when none of its pieces comes from a tile with a neighbour still to
        be added: nothing can join it any more. Finished segments are ranked as `join` ranks them
        (score, then first piece), so the result is the same; memory holds `keep` finished
        segments and those of the tiles still open instead of every tile's instances.
        """
        members: dict[int, list[int]] = {}
        open_roots = set()
        for p in sorted(self.alive):
            root = self._find(p)
            members.setdefault(root, []).append(p)
            if self.remaining[self.pieces[p].tile]:
                open_roots.add(root)
        finished = []
        for root, group in members.items():
            if root in open_roots:
                continue
            cored = [p for p in group if self.pieces[p].area]
            if cored:
                finished.append((-self._score(cored), cored[0], group))
            else:
                self._drop(group)  # no pixel in any core: never part of the result
        for _, _, group in sorted(finished)[keep:]:
            self._drop(group)

    def _drop(self, group: list[int]) -> None:
        for p in group:
            self.pieces[p].crop, self.pieces[p].area = None, 0
            self.alive.discard(p)

    def groups(self, stuff_by_class: bool) -> list[list[int]]:
        """Piece ids of each joined segment with core pixels, in order of their first piece."""
        if stuff_by_class:
            first: dict[int, int] = {}
            for p, piece in enumerate(self.pieces):
                if not piece.thing and piece.area:
                    self._union(first.setdefault(piece.label, p), p)
        members: dict[int, list[int]] = {}
        for p, piece in enumerate(self.pieces):
            if piece.area:
                members.setdefault(self._find(p), []).append(p)
        return sorted(members.values(), key=lambda g: g[0])

    def _paint(self, canvas: Tensor, group: list[int], value: int | bool) -> None:
        for p in group:
            piece = self.pieces[p]
            h, w = piece.crop.shape
            view = canvas[piece.y0 : piece.y0 + h, piece.x0 : piece.x0 + w]
            view.masked_fill_(piece.crop, value)

    def _score(self, group: list[int]) -> float:
        area = sum(self.pieces[p].area for p in group)
        return sum(self.pieces[p].score * self.pieces[p].area for p in group) / area

    def join(self, results, task: str, size: tuple[int, int], stuff_classes: Sequence[int], top_k: int,
             device: torch.device, mask_format: str = "auto") -> Result:
        stuff = set(int(c) for c in stuff_classes)
        for index, _, result in results:
            if task == "panoptic":
                seg = result.segmentation.to(device)
                ids = torch.tensor([s["id"] for s in result.segments], dtype=torch.long, device=device)
                masks = seg[None] == ids[:, None, None]  # (K, th, tw)
                labels = torch.tensor([s["category_id"] for s in result.segments], dtype=torch.long, device=device)
                scores = torch.tensor([float(s["score"]) for s in result.segments], device=device)
                thing = torch.tensor([bool(s["isthing"]) for s in result.segments], dtype=torch.bool, device=device)
            else:
                masks, labels, scores = (x.to(device) for x in (dense_masks(result.masks), result.labels, result.scores))
                thing = torch.ones(labels.shape[0], dtype=torch.bool, device=device)
            self.add(index, masks.bool(), labels.long(), scores.float(), thing)
            row_done = index + 1 == len(self.tiles) or self.tiles[index + 1].row != self.tiles[index].row
            if task == "instance" and row_done:
                self.prune(top_k)
        h, w = size
        if task == "panoptic":
            canvas = torch.zeros(h, w, dtype=torch.long, device=device)
            segments = []
            for n, group in enumerate(self.groups(stuff_by_class=True), start=1):
                self._paint(canvas, group, n)
                label = self.pieces[group[0]].label
                segments.append({"id": n, "category_id": label, "isthing": label not in stuff,
                                 "score": self._score(group), "area": sum(self.pieces[p].area for p in group)})
            return PanopticResult(canvas, segments)
        groups = self.groups(stuff_by_class=False)
        # Best score first, ties in order of the first piece: the ranking `prune` keeps to.
        ranked = sorted((-self._score(g), g[0], n) for n, g in enumerate(groups))[:top_k]
        order = [n for *_, n in ranked]
        scores = torch.tensor([-r[0] for r in ranked], dtype=torch.float32, device=device)
        if use_rle(mask_format, len(order), size):  # one image-sized mask at a time
            canvas = torch.zeros(h, w, dtype=torch.bool, device=device)
            rles = []
            for g in order:
                canvas.zero_()
                self._paint(canvas, groups[g], True)
                rles.append(RLEMasks.encode_one(canvas))
            masks: Masks = RLEMasks(rles, size, device)
        else:
            masks = torch.zeros(len(order), h, w, dtype=torch.bool, device=device)
            for n, g in enumerate(order):
                self._paint(masks[n], groups[g], True)
        labels = torch.tensor([self.pieces[groups[g][0]].label for g in order], dtype=torch.long, device=device)
        return InstanceResult(masks, labels, scores)
