"""Inference: preprocess (resize + pad, sliding windows), restore (the way back to the image),
postprocess (the panoptic / instance / semantic rules), tiling (large images), Predictor, exported
(running .onnx / .pt2 / .ts files), writers and result_log (`eomt predict`'s files), overlays, io."""

from __future__ import annotations

from typing import Any

_LAZY = {
    "Predictor": "eomt.inference.predictor",
    "resize_and_pad": "eomt.inference.preprocess",
    "sliding_windows": "eomt.inference.preprocess",
    "read_image": "eomt.inference.io",
    "load_image": "eomt.inference.io",
    "ImageReadError": "eomt.inference.io",
    "overlay": "eomt.inference.visualize",
}


def __getattr__(name: str) -> Any:
    # Submodules load on first use: `import eomt.inference.preprocess` stays light.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'eomt.inference' has no attribute {name!r}")


__all__ = list(_LAZY)
