"""Joining the thing and stuff segments of tiles into segments of the image (panoptic, instance).

The rule (in full in `eomt.inference.tiling`): a tile's segment keeps its pixels inside the tile's
core; segments of overlapping tiles with the same class and IoU >= `merge_iou` over the rectangle
both tiles cover are one thing (union-find over all tiles); a joined segment is the union of its
pieces' core pixels, its score their core-area-weighted mean; stuff segments of one class are one
segment over the image. A tile's result is reduced at once to its core pieces (boolean crops) and
to the masks it shares with tiles still to come.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch
from torch import Tensor

from eomt.inference.postprocess import use_rle
from eomt.inference.tiles import Tile, shared_rect
from eomt.structures import InstanceResult, Masks, PanopticResult, RLEMasks, SemanticResult, dense_masks

Result = Union[PanopticResult, InstanceResult, SemanticResult]


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


class TileJoiner:
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
                shared = shared_rect(tiles[i], b)
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

