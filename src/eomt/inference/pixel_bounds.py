"""Panoptic pixel assignment decided on the low-resolution logits wherever it can be.

Bilinear interpolation makes every restored logit a convex combination of a few low-resolution
logits, so the minimum and maximum over those bound it. Pixels that read the same low-resolution
rows and columns form a *cell* (about 4x4 pixels at the usual 4x upsampling), and per cell the
bounds (moved outward by a margin larger than any float rounding) decide most of the panoptic
rules without looking at a pixel:
- the winner of `score_q * sigmoid(logit_q)`, when the best lower bound beats every other
  query's upper bound (then the winner is strictly best at every pixel of the cell);
- whether a query's own mask `sigmoid >= mask_threshold` holds everywhere or nowhere in the cell.
What the bounds leave open, (cell, candidate query) pairs where two or more queries may win and
(cell, query) pairs whose mask boundary crosses the cell, is computed exactly from the restored
logits, pixel by pixel, with the same operations as the direct path. The result equals the direct
path's; on real outputs (smooth masks with sharp boundaries) the open pairs are a few percent of
the work. When they are not (noise-like logits), `plan_assignment` returns None and the caller
takes the direct path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from eomt.inference.restore import restore_geometry
from eomt.structures import ImageMeta

_MAX_OPEN_FRACTION = 0.25  # open pairs x cell pixels, as a fraction of queries x pixels
_RELATIVE_MARGIN = 1e-5  # on scores: covers float rounding of sigmoid and the product


def _source_range(out_size: int, in_size: int, ratio: float) -> tuple[Tensor, Tensor]:
    """First and last input index each output index of a bilinear resize reads (align_corners
    False, `ratio` input pixels per output pixel), widened by a hair for float rounding."""
    d = torch.arange(out_size, dtype=torch.float64)
    src = (ratio * (d + 0.5) - 0.5).clamp(min=0)
    tol = 1e-3 + 1e-6 * src
    lo = torch.floor(src - tol).clamp(0, in_size - 1).long()
    hi = (torch.floor(src + tol) + 1).clamp(max=in_size - 1).long()
    return lo, hi


def _axis_sources(used: int, stage: int, scale: float | None, scaled: int, original: int) -> tuple[Tensor, Tensor]:
    """Per output pixel along one axis, the first and last low-resolution index it depends on
    through `restore_logits`: `used` -> `stage` (factor `scale`, or from the sizes), crop to
    `scaled`, then resize to `original` when it differs."""
    lo, hi = _source_range(stage, used, 1 / scale if scale else used / stage)
    lo, hi = lo[:scaled], hi[:scaled]
    if scaled == original:
        return lo, hi
    lo2, hi2 = _source_range(original, scaled, scaled / original)
    return lo[lo2], hi[hi2]


@dataclass
class _Axis:
    """Cells along one axis: runs of pixels that read the same low-resolution indices lo..hi."""

    lo: Tensor  # (R,) first low-resolution index each cell reads
    hi: Tensor  # (R,) last one
    first: Tensor  # (R,) first pixel of each cell
    count: Tensor  # (R,) pixels in each cell
    of_pixel: Tensor  # (pixels,) the cell of every pixel

    @classmethod
    def build(cls, lo: Tensor, hi: Tensor) -> _Axis:
        key = lo * (int(hi.max()) + 1) + hi  # non-decreasing along the axis, as lo and hi are
        _, of_pixel, count = torch.unique_consecutive(key, return_inverse=True, return_counts=True)
        first = torch.cumsum(count, 0) - count
        return cls(lo[first], hi[first], first, count, of_pixel)

    def extremes(self, x: Tensor, dim: int, ops: tuple = (torch.maximum, torch.minimum)) -> list[Tensor]:
        """Max and min (or the reductions `ops`) of x over each cell's indices lo..hi along `dim`,
        which becomes R long."""
        n, r, span = x.shape[dim], self.lo.numel(), int((self.hi - self.lo).max())
        every = torch.arange(r)
        if torch.equal(self.lo, every) and torch.equal(self.hi, (every + span).clamp(max=n - 1)):
            # Cells at indices 0..R-1, each reading the next `span` (fewer at the end): shifted slices.
            out = [x.narrow(dim, 0, r).clone() for _ in ops]
            for d in range(1, span + 1):
                m = min(r, n - d)
                for op, o in zip(ops, out):
                    op(o.narrow(dim, 0, m), x.narrow(dim, d, m), out=o.narrow(dim, 0, m))
            return out
        out = [x.index_select(dim, self.lo)] * len(ops)
        for d in range(1, span + 1):
            step = x.index_select(dim, torch.minimum(self.lo + d, self.hi))  # short windows repeat their last
            out = [op(o, step) for op, o in zip(ops, out)]
        return out


def _window_extremes(x: Tensor, rows: _Axis, cols: _Axis) -> tuple[Tensor, Tensor]:
    """Max and min of (K, h, w) logits over each cell's low-resolution window: (K, R, C) each."""
    top, bottom = cols.extremes(x, 2)  # (K, h, C)
    return rows.extremes(top, 1, (torch.maximum,))[0], rows.extremes(bottom, 1, (torch.minimum,))[0]


@dataclass
class AssignmentPlan:
    """What the cell bounds decided; `resolve` adds the open pairs from the restored logits."""

    size: tuple[int, int]
    rows: _Axis
    cols: _Axis
    scores: Tensor  # (K,)
    mask_threshold: float
    winner: Tensor  # (R*C,) the best lower bound's query per cell
    winner_inside: Tensor  # (R*C,) the winner's mask holds over the whole cell
    orig_area: Tensor  # (K,) pixels of cells that lie wholly inside each query's mask
    contested: tuple[Tensor, Tensor]  # (query, cell) pairs that may win a pixel of an open cell
    crossing: tuple[Tensor, Tensor]  # (query, cell) pairs whose mask boundary crosses the cell

    def resolve(self, logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-pixel winner (H*W,) int64, whether the pixel is inside its winner's mask (H*W,)
        bool, and per query its mask area (K,) int64, from the restored logits (K, H, W)."""
        h, w = self.size
        k = logits.shape[0]
        cell_of = self.rows.of_pixel[:, None] * self.cols.lo.numel() + self.cols.of_pixel[None, :]  # (H, W)
        mask_ids = self.winner[cell_of].flatten()  # (H*W,)
        inside = self.winner_inside[cell_of].flatten()

        # Crossing pairs: exact mask areas.
        q, y, x = self._pixels(*self.crossing)
        own = _gather(logits, q, y, x).sigmoid() >= self.mask_threshold  # (P,)
        orig_area = self.orig_area + torch.bincount(q[own], minlength=k)

        # Contested pairs: the best `score * sigmoid` per pixel, ties to the first query (as argmax).
        q, y, x = self._pixels(*self.contested)
        pixel = y * w + x
        prob = _gather(logits, q, y, x).sigmoid()
        weighted = prob * self.scores[q]  # (P,)
        best = torch.full((h * w,), -1.0).scatter_reduce_(0, pixel, weighted, "amax")
        tied = weighted == best[pixel]
        first = torch.full((h * w,), k).scatter_reduce_(0, pixel, torch.where(tied, q, k), "amin")
        wins = tied & (q == first[pixel])  # (P,) one per contested pixel
        mask_ids[pixel[wins]] = q[wins]
        inside[pixel[wins]] = prob[wins] >= self.mask_threshold
        return mask_ids, inside, orig_area

    def _pixels(self, q: Tensor, cell: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Every pixel of every (query, cell) pair, in pair order: query, row and column, (P,) each
        (P = the pixels of all the pairs' cells)."""
        r, c = cell // self.cols.lo.numel(), cell % self.cols.lo.numel()
        nr, nc = self.rows.count[r], self.cols.count[c]
        n = nr * nc  # (M,) pixels of each pair's cell
        pair = torch.repeat_interleave(n)  # (P,)
        j = torch.arange(pair.numel()) - (torch.cumsum(n, 0) - n)[pair]  # (P,) pixel within the cell
        nc = nc[pair]
        return q[pair], self.rows.first[r][pair] + j // nc, self.cols.first[c][pair] + j % nc


def _gather(logits: Tensor, q: Tensor, y: Tensor, x: Tensor) -> Tensor:
    """logits[q, y, x] (P,) for (K, H, W) logits of any (non-negative) strides, read from storage."""
    extent = 1 + sum((n - 1) * st for n, st in zip(logits.shape, logits.stride()))
    sq, sy, sx = logits.stride()
    return logits.as_strided((extent,), (1,)).index_select(0, q * sq + y * sy + x * sx)


def plan_assignment(low: Tensor, meta: ImageMeta, scores: Tensor, mask_threshold: float) -> AssignmentPlan | None:
    """Decide the panoptic pixel assignment of the kept queries' low-resolution logits `low`
    (K, h4, w4), which `restore.restore_logits` will restore for `meta`, per cell.
    None when too much would stay open (or the threshold is extreme)."""
    if not 0.01 <= mask_threshold <= 0.99:
        return None
    k = low.shape[0]
    h, w = meta.original_size
    used_rows, used_cols, stage, scale = restore_geometry(low.shape[1:], meta)
    rows = _Axis.build(*_axis_sources(used_rows, stage[0], scale and scale[0], meta.scaled_size[0], h))
    cols = _Axis.build(*_axis_sources(used_cols, stage[1], scale and scale[1], meta.scaled_size[1], w))
    x = low[:, :used_rows, :used_cols].float().contiguous()  # the network's logits are channels-last
    upper, lower = _window_extremes(x, rows, cols)  # (K, R, C)
    upper, lower = upper.reshape(k, -1), lower.reshape(k, -1)  # (K, N) N cells
    margin = 1e-4 * (1.0 + max(-float(lower.min()), float(upper.max())))  # far above interpolation rounding
    boundary = math.log(mask_threshold / (1 - mask_threshold))
    inside, outside = lower > boundary + margin, upper < boundary - margin  # (K, N)
    known = inside | outside
    if int(known.logical_not().sum()) > _MAX_OPEN_FRACTION * known.numel():
        return None  # the crossing pairs alone (average cells) are too many: noise-like logits

    s = scores.float()[:, None]
    best_lower, winner = (lower - margin).sigmoid_().mul_(s).max(0)  # (N,)
    candidate = (upper + margin).sigmoid_().mul_(s) >= best_lower * (1 - _RELATIVE_MARGIN)  # (K, N)
    others = candidate.scatter(0, winner[None], False).any(0)  # (N,) another query may win
    open_cell = others | ~known.gather(0, winner[None])[0]
    crossing_cell = ~known.all(0)
    open_idx, crossing_idx = open_cell.nonzero()[:, 0], crossing_cell.nonzero()[:, 0]
    contested = candidate[:, open_idx].nonzero(as_tuple=True)
    crossing = (~known[:, crossing_idx]).nonzero(as_tuple=True)
    pixels = (rows.count[:, None] * cols.count[None, :]).flatten()  # (N,) pixels per cell
    work = pixels[open_idx[contested[1]]].sum() + pixels[crossing_idx[crossing[1]]].sum()
    if int(work) > _MAX_OPEN_FRACTION * k * h * w:
        return None
    # Whole-cell mask areas: per row of cells then over rows, two matrix products exact in float.
    per_row = inside.view(k * rows.lo.numel(), -1).float() @ cols.count.float()  # (K*R,) <= W
    orig_area = (per_row.view(k, -1).double() @ rows.count.double()).long()  # (K,)
    return AssignmentPlan(
        (h, w), rows, cols, scores.float(), mask_threshold, winner, inside.gather(0, winner[None])[0],
        orig_area, (contested[0], open_idx[contested[1]]), (crossing[0], crossing_idx[crossing[1]])
    )
