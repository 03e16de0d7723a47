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

from typing import Callable, Sequence, Union

import torch
from torch import Tensor

from eomt.inference.tile_join import TileJoiner
from eomt.inference.tiles import Tile, make_tiles, tile_starts
from eomt.structures import InstanceResult, PanopticResult, SemanticResult

Result = Union[PanopticResult, InstanceResult, SemanticResult]
MERGE_IOU = 0.5
__all__ = ["MERGE_IOU", "Tile", "make_tiles", "predict_tiled", "tile_starts"]


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
    return TileJoiner(tiles, merge_iou).join(results(), task, (h, w), stuff_classes, top_k, image.device, mask_format)


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

