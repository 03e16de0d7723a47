"""int8 CPU inference: an `EoMT` whose ViT linear layers run int8 (`Predictor(dtype="int8")`).

Dynamic quantisation (`eomt.models.fast.int8`): weights int8 per output channel, fixed once;
activations quantised per call from their own range, so no calibration images are needed.
Patch embedding, LayerNorm, attention (SDPA), the mask module and post-processing stay fp32.
Chosen over onnxruntime's quantisation of the exported graph by measurement (`benchmarks/int8.py`,
`benchmarks/RESULTS.md`): as fast (1.00x), no export per input size, no extra dependency.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import Tensor

from eomt.errors import OptionError
from eomt.models import EoMT
from eomt.models.fast.int8 import int8_available, quantize_linear_layers
from eomt.structures import PanopticResult, SemanticResult

log = logging.getLogger(__name__)


def to_int8(model: EoMT, copy_model: bool = True) -> EoMT:
    """`model` with the linear layers of its ViT blocks in int8, in eval mode on the CPU.

    copy_model: quantise a deep copy (the caller's model keeps its fp32 layers); False converts
    `model` itself. A bf16 model is brought back to fp32 first (int8 kernels take fp32 inputs).
    Raises `OptionError` when the argument is not an `EoMT` network or this PyTorch build has no
    int8 kernels.
    """
    if not isinstance(model, EoMT):
        raise OptionError(f"dtype: int8 needs an EoMT network, got {type(model).__name__} "
                          "(an exported .onnx/.pt2/.ts graph cannot be quantised: pass its checkpoint instead)")
    if not int8_available():
        raise OptionError(f"dtype: int8 is not available in this PyTorch build "
                          f"(quantized engine {torch.backends.quantized.engine!r}); use fp32 or bf16")
    net = copy.deepcopy(model) if copy_model else model
    net = net.to(device="cpu", dtype=torch.float32).eval()
    count = quantize_linear_layers(net.backbone.blocks)
    log.debug("int8: %d linear layers of the ViT quantised", count)
    return net


def panoptic_agreement(result: PanopticResult, reference: PanopticResult) -> tuple[int, int]:
    """(pixels that agree, pixels) between two panoptic results of one image, ignoring segment ids.

    A pixel agrees when both call it void, or when both give it the same class and its segment in
    `result` is matched to its segment in `reference`: each segment of `result` is matched to the
    `reference` segment it overlaps most. So a thing split in two or two things joined counts the
    pixels of the unmatched part as disagreeing.
    """
    a, b = result.segmentation.flatten().long(), reference.segmentation.flatten().long()  # (H*W,)
    na, nb = int(a.max()) + 1, int(b.max()) + 1
    overlap = torch.bincount(a * nb + b, minlength=na * nb).view(na, nb)  # (segments a, segments b)
    partner = overlap.argmax(dim=1)  # (na,) the reference segment each segment overlaps most
    cls_a = _class_of_ids(result, na)
    cls_b = _class_of_ids(reference, nb)
    agree = (partner[a] == b) & (cls_a[a] == cls_b[b])
    return int(agree.sum()), a.numel()


def semantic_agreement(result: SemanticResult, reference: SemanticResult) -> tuple[int, int]:
    """(pixels with the same label, pixels) between two semantic results of one image."""
    return int((result.labels == reference.labels).sum()), result.labels.numel()


def _class_of_ids(result: PanopticResult, n: int) -> Tensor:
    """(n,) class of each segment id, -1 for void (id 0) and unused ids."""
    cls = torch.full((n,), -1, dtype=torch.long)
    for seg in result.segments:  # one entry per segment, not per pixel
        cls[seg["id"]] = seg["category_id"]
    return cls
