"""Tile geometry of large images: tiles `tile - overlap` apart, each owning a core.

Tiles are `tile x tile` pixels (smaller only where the image is), `tile - overlap` apart along each
axis; the last tile of a row or column ends at the image border. Along an axis, the border between
the cores of neighbouring tiles lies in the middle of their overlap, and the cores of the first and
last tiles reach the image border: the cores partition the image. The rules that join the tile
results: `eomt.inference.tiling`.
"""

from __future__ import annotations

from dataclasses import dataclass


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


def shared_rect(a: Tile, b: Tile) -> tuple[int, int, int, int] | None:
    """The rectangle (y0, y1, x0, x1) two tiles both cover, in image pixels; None if empty."""
    y0, y1, x0, x1 = max(a.y0, b.y0), min(a.y1, b.y1), max(a.x0, b.x0), min(a.x1, b.x1)
    return (y0, y1, x0, x1) if y0 < y1 and x0 < x1 else None

