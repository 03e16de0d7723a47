"""Random but reproducible predictions and targets for the evaluator tests.

Segment maps are Voronoi cells of a few random centres; predictions are targets shifted by a
pixel or two, with a patch of foreign segments pasted in, some categories flipped and some void,
so an image mixes matches (IoU > 0.5), misses and false positives.
"""

from __future__ import annotations

import torch
from torch import Tensor

from eomt.structures import InstanceResult, PanopticResult, Target


def voronoi(gen: torch.Generator, h: int, w: int, k: int) -> Tensor:
    """(H, W) int64 map of the nearest of k random centres."""
    centres = torch.rand(k, 2, generator=gen) * torch.tensor([h, w])
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    grid = torch.stack((yy, xx), -1).reshape(-1, 1, 2).float()  # (H*W, 1, 2)
    return ((grid - centres) ** 2).sum(-1).argmin(-1).reshape(h, w)


def _rect(gen: torch.Generator, h: int, w: int) -> Tensor:
    """(H, W) bool random rectangle covering up to about a quarter of the image."""
    y0, x0 = int(torch.randint(0, h, (1,), generator=gen)), int(torch.randint(0, w, (1,), generator=gen))
    out = torch.zeros(h, w, dtype=torch.bool)
    out[y0 : y0 + h // 2, x0 : x0 + w // 2] = True
    return out


def random_panoptic(
    gen: torch.Generator, h: int, w: int, num_classes: int, stuff: list[int]
) -> tuple[PanopticResult, Target, Tensor, Tensor]:
    """A crowd-free (prediction, target) pair, and the same as torchmetrics (H, W, 2) inputs.

    torchmetrics inputs follow the official evaluation: target void -> category -1 (unknown, so
    torchmetrics' void); prediction void -> the extra stuff category `num_classes`.
    """
    k = int(torch.randint(3, 7, (1,), generator=gen))
    tgt_ids = voronoi(gen, h, w, k)
    tgt_ids[_rect(gen, h, w)] = -1  # void
    tgt_cats = torch.randint(0, num_classes, (k,), generator=gen)

    shift = torch.randint(-2, 3, (2,), generator=gen).tolist()
    pred_ids = torch.roll(tgt_ids.clamp(min=0), shifts=shift, dims=(0, 1))
    patch = _rect(gen, h, w)
    pred_ids = torch.where(patch, voronoi(gen, h, w, 3) + k, pred_ids)  # foreign segments k..k+2
    pred_ids[_rect(gen, h, w) & ~patch] = -1  # void
    flip = torch.rand(k + 3, generator=gen) < 0.25
    pred_cats = torch.cat((tgt_cats, torch.randint(0, num_classes, (3,), generator=gen)))
    pred_cats = torch.where(flip, torch.randint(0, num_classes, (k + 3,), generator=gen), pred_cats)

    masks = tgt_ids[None] == torch.arange(k)[:, None, None]  # (k, H, W); a cell may be all void
    target = Target(masks, tgt_cats, torch.zeros(k, dtype=torch.bool))
    seg_id = torch.arange(k + 3) * 7 + 3  # arbitrary non-zero segment ids
    segmentation = torch.where(pred_ids >= 0, seg_id[pred_ids.clamp(min=0)], 0)
    segments = [
        {"id": int(seg_id[i]), "category_id": int(pred_cats[i]), "isthing": int(pred_cats[i]) not in stuff,
         "score": 1.0, "area": int((pred_ids == i).sum())}
        for i in range(k + 3)  # segments with no pixel left are listed too
    ]
    pred = PanopticResult(segmentation, segments)

    tgt_tm = torch.stack((torch.where(tgt_ids >= 0, tgt_cats[tgt_ids.clamp(min=0)], -1), tgt_ids), -1)
    pred_tm = torch.stack(
        (torch.where(pred_ids >= 0, pred_cats[pred_ids.clamp(min=0)], num_classes), pred_ids.clamp(min=0)), -1
    )
    return pred, target, pred_tm, tgt_tm


def random_semantic(gen: torch.Generator, h: int, w: int, num_classes: int) -> tuple[Tensor, Tensor]:
    """(prediction, target) (H, W) label maps; the target has 255 pixels; the last class never occurs."""
    k = 5
    cats = torch.randint(0, num_classes - 1, (k,), generator=gen)
    target = cats[voronoi(gen, h, w, k)]
    target[_rect(gen, h, w)] = 255
    pred = torch.roll(cats[voronoi(gen, h, w, k)], 1, 0)
    noise = torch.rand(h, w, generator=gen) < 0.2
    pred = torch.where(noise, torch.randint(0, num_classes - 1, (h, w), generator=gen), pred)
    target = torch.where(torch.rand(h, w, generator=gen) < 0.5, target, torch.where(target == 255, 255, pred))
    return pred, target


def random_instance(gen: torch.Generator, h: int, w: int, num_classes: int) -> tuple[InstanceResult, Target]:
    """(prediction, target) with 3-4 box-like objects (one a crowd), jittered copies as
    detections plus a few spurious ones, random scores."""
    n = int(torch.randint(3, 5, (1,), generator=gen))
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")

    def boxes(m: int, jitter: Tensor | None = None) -> Tensor:
        if jitter is None:
            c = torch.rand(m, 2, generator=gen) * torch.tensor([h, w])
            r = (0.1 + 0.3 * torch.rand(m, 2, generator=gen)) * torch.tensor([h, w])
            jitter = torch.cat((c, r), 1)
        c, r = jitter[:, None, None, :2], jitter[:, None, None, 2:]
        return ((yy - c[..., 0]).abs() <= r[..., 0]) & ((xx - c[..., 1]).abs() <= r[..., 1])  # (m, H, W)

    params = torch.cat(
        (torch.rand(n, 2, generator=gen) * torch.tensor([h, w]),
         (0.1 + 0.3 * torch.rand(n, 2, generator=gen)) * torch.tensor([h, w])), 1
    )
    gt_labels = torch.randint(0, num_classes, (n,), generator=gen)
    crowd = torch.zeros(n, dtype=torch.bool)
    crowd[0] = True
    target = Target(boxes(n, params), gt_labels, crowd)

    jittered = params + torch.randn(n, 4, generator=gen) * torch.tensor([1.5, 1.5, 1.0, 1.0])
    extra = 2
    masks = torch.cat((boxes(n, jittered), boxes(extra)))
    labels = torch.cat((gt_labels, torch.randint(0, num_classes, (extra,), generator=gen)))
    flip = torch.rand(n + extra, generator=gen) < 0.2
    labels = torch.where(flip, torch.randint(0, num_classes, (n + extra,), generator=gen), labels)
    keep = masks.flatten(1).any(1)
    pred = InstanceResult(masks[keep], labels[keep], torch.rand(int(keep.sum()), generator=gen))
    return pred, target
