"""Network outputs -> per-image results (panoptic, instance, semantic), as the official evaluation.

One module per rule: `panoptic_rule`, `instance_rule`, `semantic_rule`; each holds its direct form
and, beside it, the large-image form that restores one query (or class) at a time and reduces
into per-pixel state with the same result. The way back from the network's grid to the image is
`eomt.inference.restore`; `blocks` holds the per-pixel reductions the rules share.

All work happens on the device of the logits, in float32, vectorised over queries, segments and
pixels; the only Python loops are over the images of a batch and, on the CPU, over blocks of
pixels that keep the per-pixel work in cache. Only the queries a result can use are upsampled to
full resolution (bilinear interpolation treats every query channel on its own, so this changes
nothing but the memory and time). On the CPU, panoptic segmentation decides most pixels from
bounds on the low-resolution logits and computes the rest exactly (`eomt.inference.pixel_bounds`);
the result is the same.

Differences from the transformers port, on purpose: see `panoptic_rule` (the overlap tie, segment
ids from 1 with 0 = void) and `instance_rule` (top-k over all (query, class) pairs).
"""

from __future__ import annotations

from eomt.inference.postprocess.instance_rule import DENSE_MASK_BYTES, MASK_FORMATS, check_mask_format, instance, use_rle
from eomt.inference.postprocess.panoptic_rule import panoptic
from eomt.inference.postprocess.semantic_rule import semantic
from eomt.inference.restore import Workspace

__all__ = ["DENSE_MASK_BYTES", "MASK_FORMATS", "Workspace", "check_mask_format", "instance", "panoptic", "semantic", "use_rle"]
