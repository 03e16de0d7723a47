"""CPU fast paths, each in its own file beside the plain reference it must equal.

- `linear`: fused bf16 linear (+ GELU) layers on oneDNN CPUs; reference `F.linear` / `F.gelu`.
- `upscale`: `ScaleBlock` in matmul form and the banded last upscale with the mask product;
  reference `eomt.models.upscale.ScaleBlock` and a plain matmul.
- `int8`: the ViT blocks' linear layers with int8 weights and dynamically quantised activations
  (`quantize_linear_layers`), for CPU inference; reference the fp32 network, which it approximates.

`set_fused_kernels(False)` switches every exact fast path off (the reference paths run instead).
Each file's first line states its contract and names the test that guards it.
"""

from eomt.models.fast.linear import cpu_inference, fast_paths_on, fused_kernels_enabled, set_fused_kernels

__all__ = ["cpu_inference", "fast_paths_on", "fused_kernels_enabled", "set_fused_kernels"]
