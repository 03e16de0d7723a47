"""Overlay pictures of results: colours blended onto the image, segment boundaries, a legend.

Colours are deterministic: class c always gets the same colour (hues spaced by the golden ratio);
thing segments / instances of one class get lighter and darker shades of it, one per instance.
The legend, a panel to the right of the picture, lists the classes present with their colours.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from eomt.structures import InstanceResult, PanopticResult, SemanticResult

_BOUNDARY = np.array([255, 255, 255], dtype=np.uint8)
_BAND_PIXELS = 1 << 20  # pixels blended at a time
_LEGEND_MAX_ROWS = 40
# Legend text and outlines are sized for the picture seen whole on a screen: up to this longer side
# they keep their base size (11 px text, 1 px outlines), above it they grow in proportion.
_VIEW_SIZE = 800
_FONT_SIZE = 11


def view_scale(height: int, width: int) -> float:
    """How much larger than on a `_VIEW_SIZE` picture legend text and outlines are drawn (>= 1)."""
    return max(1.0, max(height, width) / _VIEW_SIZE)


def outline_width(height: int, width: int) -> int:
    """Segment outline thickness in pixels for a picture of this size."""
    return max(1, round(view_scale(height, width)))


def legend_font(height: int, width: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """The legend font for a picture of this size (Pillow's default face, scaled)."""
    try:
        return ImageFont.load_default(size=round(_FONT_SIZE * view_scale(height, width)))
    except (TypeError, ImportError):  # Pillow < 10.1 or without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def class_colors(class_ids: Tensor | Sequence[int]) -> np.ndarray:
    """Deterministic RGB colours (N, 3) uint8 for class ids: golden-ratio hues, fixed S and V."""
    ids = np.asarray(torch.as_tensor(class_ids).cpu(), dtype=np.float64).reshape(-1)
    hue = (ids * 0.618033988749895 + 0.1) % 1.0
    sat = 0.55 + 0.35 * ((ids * 7) % 3) / 2.0  # three saturation levels separate close hues
    val = np.full_like(hue, 0.95)
    # Vectorised HSV -> RGB.
    i = np.floor(hue * 6.0).astype(np.int64) % 6
    f = hue * 6.0 - np.floor(hue * 6.0)
    p, q, t = val * (1 - sat), val * (1 - f * sat), val * (1 - (1 - f) * sat)
    table = np.stack(
        [np.stack([val, t, p], -1), np.stack([q, val, p], -1), np.stack([p, val, t], -1),
         np.stack([p, q, val], -1), np.stack([t, p, val], -1), np.stack([val, p, q], -1)], 0
    )  # (6, N, 3)
    rgb = table[i, np.arange(len(ids))]
    return np.round(rgb * 255).astype(np.uint8)


def instance_colors(labels: Tensor | Sequence[int]) -> np.ndarray:
    """Colours (N, 3) for N instances: the class colour, shaded by the instance's rank in its class."""
    labels = torch.as_tensor(labels).cpu().long().reshape(-1)
    base = class_colors(labels).astype(np.float64)
    if labels.numel() == 0:
        return base.astype(np.uint8)
    # Rank of each instance among the earlier ones of its class (vectorised cumulative count).
    same = labels[:, None] == labels[None, :]  # (N, N)
    rank = torch.tril(same, diagonal=-1).sum(1).numpy()
    shade = np.array([0.0, 0.3, -0.3, 0.5, -0.5])[rank % 5]  # the first keeps the class colour
    target = np.where(shade[:, None] > 0, 255.0, 0.0)
    mixed = base + np.abs(shade)[:, None] * (target - base)
    return np.round(mixed).clip(0, 255).astype(np.uint8)


def boundaries(ids: Tensor, width: int = 1) -> Tensor:
    """(H, W) bool: pixels whose right or lower neighbour carries a different id, the lines
    thickened to `width` pixels (across: right of vertical lines, below horizontal ones)."""
    edge = torch.zeros_like(ids, dtype=torch.bool)
    edge[:, :-1] |= ids[:, 1:] != ids[:, :-1]
    edge[:-1, :] |= ids[1:, :] != ids[:-1, :]
    if width > 1:
        thin = edge.clone()
        for k in range(1, min(width, *ids.shape)):
            edge[:, k:] |= thin[:, :-k]
            edge[k:, :] |= thin[:-k, :]
    return edge


def _image_array(image: Tensor) -> np.ndarray:
    """(3, H, W) uint8 or float [0, 1] tensor -> (H, W, 3) uint8."""
    if image.is_floating_point():
        image = (image * 255).round().clamp(0, 255).to(torch.uint8)
    return image.permute(1, 2, 0).cpu().numpy()


def _blend(image: Tensor, ids: Tensor, colors: np.ndarray, alpha: float) -> np.ndarray:
    """Blend `colors[ids]` onto the image where ids > 0, and draw id boundaries. ids: (H, W).

    In bands of rows (about a million pixels each), so that the float copies of the image and the
    colours stay small whatever the image size; every pixel is computed as in one piece."""
    h, w = ids.shape[-2:]
    out = np.empty((h, w, 3), dtype=np.uint8)
    band = max(1, _BAND_PIXELS // max(1, w))
    for r in range(0, h, band):
        base = _image_array(image[:, r : r + band]).astype(np.float32)  # (b, W, 3)
        ids_np = ids[r : r + band].cpu().numpy()
        paint = colors[ids_np].astype(np.float32)  # (b, W, 3)
        covered = (ids_np > 0)[..., None]
        out[r : r + band] = np.round(np.where(covered, (1 - alpha) * base + alpha * paint, base))
    out[boundaries(ids.cpu(), outline_width(h, w)).numpy()] = _BOUNDARY
    return out


def _with_legend(picture: np.ndarray, entries: list[tuple[str, np.ndarray]]) -> Image.Image:
    """Append a legend panel (colour swatch + name per entry) to the right of the picture."""
    h, w = picture.shape[:2]
    font = legend_font(h, w)
    if not entries:
        entries = [("(nothing found)", np.array([80, 80, 80], dtype=np.uint8))]
    shown = entries[:_LEGEND_MAX_ROWS]
    if len(entries) > len(shown):
        shown.append((f"... +{len(entries) - len(shown)} more", np.array([80, 80, 80], dtype=np.uint8)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    boxes = [probe.textbbox((0, 0), name, font=font) for name, _ in shown]
    pad = max(2, round(2 * view_scale(h, w)))  # margins grow with the text
    row = max(b[3] for b in boxes) + 3 * pad
    swatch = row - 2 * pad
    width = 6 * pad + swatch + max(b[2] - b[0] for b in boxes)
    canvas = Image.new("RGB", (w + width, max(h, row * len(shown) + 2 * pad)), (24, 24, 24))
    canvas.paste(Image.fromarray(picture), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for j, (name, color) in enumerate(shown):
        y = pad + j * row
        draw.rectangle([w + 2 * pad, y + pad, w + 2 * pad + swatch, y + pad + swatch],
                       fill=tuple(int(c) for c in color))
        draw.text((w + 4 * pad + swatch, y + pad // 2), name, fill=(235, 235, 235), font=font)
    return canvas


def _name(class_id: int, class_names: Sequence[str] | None) -> str:
    if class_names and 0 <= class_id < len(class_names):
        return str(class_names[class_id])
    return f"class {class_id}"


def overlay_panoptic(
    image: Tensor, result: PanopticResult, class_names: Sequence[str] | None = None, alpha: float = 0.55
) -> Image.Image:
    """Panoptic overlay: stuff in its class colour, each thing in its own shade, plus legend."""
    segs = result.segments
    labels = [s["category_id"] for s in segs]
    colors = np.zeros((len(segs) + 1, 3), dtype=np.uint8)  # row 0: void, left unpainted
    if segs:
        stuff = np.array([not s["isthing"] for s in segs])
        shaded = instance_colors(labels)
        plain = class_colors(labels)
        colors[np.array([s["id"] for s in segs])] = np.where(stuff[:, None], plain, shaded)
    picture = _blend(image, result.segmentation, colors, alpha)
    present = sorted(set(labels))
    legend = [(_name(c, class_names), col) for c, col in zip(present, class_colors(present))]
    return _with_legend(picture, legend)


def overlay_semantic(
    image: Tensor,
    result: SemanticResult,
    class_names: Sequence[str] | None = None,
    alpha: float = 0.55,
    ignore_index: int | None = None,
) -> Image.Image:
    """Semantic overlay: every pixel in its class colour, class boundaries, plus legend."""
    labels = result.labels.cpu().long()
    present = torch.unique(labels)
    if ignore_index is not None:
        present = present[present != ignore_index]
    # Shift ids by one so that 0 stays "unpainted" (used for `ignore_index` pixels only).
    num = int(labels.max()) + 2 if labels.numel() else 2
    colors = np.zeros((num, 3), dtype=np.uint8)
    colors[1:] = class_colors(torch.arange(num - 1))
    ids = labels + 1
    if ignore_index is not None:
        ids = torch.where(labels == ignore_index, 0, ids)
    picture = _blend(image, ids, colors, alpha)
    present_list = present.tolist()
    legend = [(_name(c, class_names), col) for c, col in zip(present_list, class_colors(present_list))]
    return _with_legend(picture, legend)


def overlay_instances(
    image: Tensor,
    result: InstanceResult,
    class_names: Sequence[str] | None = None,
    alpha: float = 0.55,
    threshold: float = 0.5,
) -> Image.Image:
    """Instance overlay of instances scoring >= `threshold`: one colour each, best on top, legend."""
    keep = result.scores >= threshold
    shown = keep.nonzero()[:, 0].cpu()
    shown = shown[result.scores.cpu()[shown].argsort(descending=True)]  # best first
    labels = result.labels.cpu()[shown]
    h, w = image.shape[-2:]
    # Per pixel the best-scoring instance covering it: painted worst first, so the best is on top
    # (no copies of the masks, whatever their number).
    ids = torch.zeros(h, w, dtype=torch.long)
    for rank in range(len(shown) - 1, -1, -1):
        ids.masked_fill_(result.masks[shown[rank]].cpu(), rank + 1)
    colors = np.zeros((len(labels) + 1, 3), dtype=np.uint8)
    colors[1:] = instance_colors(labels)
    picture = _blend(image, ids, colors, alpha)
    present = sorted(set(labels.tolist()))
    legend = [(_name(c, class_names), col) for c, col in zip(present, class_colors(present))]
    hidden = len(result.scores) - len(shown)
    if hidden:  # say what the picture leaves out, so an empty one is not read as "nothing found"
        legend.append((f"({hidden} below score {threshold:g})", np.array([80, 80, 80], dtype=np.uint8)))
    return _with_legend(picture, legend)


def overlay(
    image: Tensor,
    result: PanopticResult | InstanceResult | SemanticResult,
    class_names: Sequence[str] | None = None,
    **kwargs: float,
) -> Image.Image:
    """The overlay picture of any result type (see the `overlay_*` functions)."""
    if isinstance(result, PanopticResult):
        return overlay_panoptic(image, result, class_names, **kwargs)
    if isinstance(result, InstanceResult):
        return overlay_instances(image, result, class_names, **kwargs)
    if isinstance(result, SemanticResult):
        return overlay_semantic(image, result, class_names, **kwargs)
    raise TypeError(f"result: unsupported type {type(result).__name__}")


def paint(image: Tensor, ids: Tensor, colors: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """(H, W, 3) uint8: `colors[ids]` (colors (K, 3) uint8) blended onto the image (3, H, W) where
    ids (H, W) > 0, with the boundaries between ids drawn; the blend of every overlay here."""
    return _blend(image, ids, colors, alpha)


def with_legend(picture: np.ndarray, entries: list[tuple[str, np.ndarray]]) -> Image.Image:
    """The picture (H, W, 3) uint8 with a legend panel on its right: a swatch and a name per entry
    ((name, RGB colour) pairs); the panel is as wide as its longest name."""
    return _with_legend(picture, entries)
