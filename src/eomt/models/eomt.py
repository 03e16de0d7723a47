"""EoMT: a plain ViT whose last L2 blocks also process K learnable queries.

The ViT is any `eomt.models.backbones.Backbone` (chosen by the config; DINOv2 by default): this
module knows its token layout and how a block takes an attention mask, nothing of its family.

Token order after query injection: [queries (K) | prefix tokens (P; DINOv2: cls, R registers) |
patches (N)].
The mask module (class head, 3-layer MLP, two 2x upscale blocks, dot product) turns the query tokens
into class logits (B, K, C+1) and mask logits (B, K, H/4, W/4).

Masked attention (training, and inference while annealing is unfinished): before each of the last
L2 blocks an intermediate prediction is made from the shared final norm, and each query may attend
only to the patches where its bilinearly downsampled mask logits are > 0. Block j lifts the mask of
each query with probability 1 - p_j (`attn_mask_probs`). When every p_j is 0 (a trained model),
inference is a plain ViT: no intermediate prediction is made and no mask is built.

Token merging (`token_merging`, inference only, `eomt.models.merging`): ALGM merges similar patch
tokens after an early and a middle block; the merged tokens are unmerged to the full grid after
the final norm, so the mask module and everything after it see the usual (B, K, H/4, W/4) masks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from eomt.config import ModelConfig, preset
from eomt.models.backbones import build_backbone
from eomt.models.fast import upscale as fast_upscale
from eomt.models.fast.linear import fast_paths_on
from eomt.models.merging import MergingRun, TokenMerging
from eomt.models.upscale import ScaleBlock

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EoMTOutput(NamedTuple):
    """Predictions of one forward pass.

    mask_logits: (B, K, H/4, W/4) and class_logits: (B, K, C+1) of the final prediction.
    mask_logits_per_block / class_logits_per_block: the intermediate predictions made before each
    query block where masked attention ran (first query block first); empty for a plain forward.
    """

    mask_logits: Tensor
    class_logits: Tensor
    mask_logits_per_block: list[Tensor]
    class_logits_per_block: list[Tensor]


class EoMT(nn.Module):
    """The Encoder-only Mask Transformer.

    `forward(images)` takes RGB in [0, 1] as a float tensor (B, 3, H, W), H and W multiples of the
    patch size (uint8 in [0, 255] is accepted too); ImageNet normalisation happens inside.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        d, k = config.embed_dim, config.num_queries
        self.backbone = build_backbone(config)
        self.q = nn.Embedding(k, d)
        self.class_head = nn.Linear(d, config.num_classes + 1)
        self.mask_head = nn.Sequential(
            nn.Linear(d, d), nn.GELU(), nn.Linear(d, d), nn.GELU(), nn.Linear(d, d)
        )
        self.upscale = nn.Sequential(*(ScaleBlock(d) for _ in range(config.num_upscale)))
        self.register_buffer("attn_mask_probs", torch.ones(config.num_blocks))
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        # Which query blocks mask attention (p_j > 0), kept as Python bools so that the forward has
        # no data-dependent branch on a tensor (torch.compile / torch.export friendly).
        self._mask_active: tuple[bool, ...] = (True,) * config.num_blocks
        # Recompute each block's activations in the backward pass instead of keeping them
        # (training memory for compute; the forward is unchanged).
        self.gradient_checkpointing = False
        # ALGM token merging at inference (`eomt.models.merging`); None: off, the plain network.
        self.token_merging: TokenMerging | None = None
        self.register_load_state_dict_post_hook(lambda module, _keys: module._sync_mask_active())

    # ------------------------------------------------------------------ annealing state
    def set_attn_mask_probs(self, probs: Tensor | list[float] | tuple[float, ...]) -> None:
        """Set the per-block masking probabilities p_j (1 = always masked, 0 = never)."""
        probs = torch.as_tensor(probs, dtype=self.attn_mask_probs.dtype)
        if probs.shape != self.attn_mask_probs.shape:
            raise ValueError(
                f"attn_mask_probs: expected {self.config.num_blocks} values, got {tuple(probs.shape)}"
            )
        with torch.no_grad():
            self.attn_mask_probs.copy_(probs)
        # Read the flags from the CPU input: no device-to-host sync per training step.
        self._mask_active = tuple(bool(p > 0) for p in probs.tolist())

    def _sync_mask_active(self) -> None:
        self._mask_active = tuple(bool(p > 0) for p in self.attn_mask_probs.tolist())

    @property
    def masked_attention_active(self) -> bool:
        """True while any query block still masks attention (annealing unfinished)."""
        return any(self._mask_active)

    # ------------------------------------------------------------------ forward
    def forward(self, images: Tensor, lift_noise: Tensor | None = None) -> EoMTOutput:
        """Images (B, 3, H, W), RGB uint8 or float in [0, 1] -> `EoMTOutput`.

        lift_noise: optional (B, L2, K) uniform [0, 1) draws for masked attention: query k of block
        j is unmasked where lift_noise[:, j, k] > attn_mask_probs[j]. Training passes draws from
        per-image generators so the result does not depend on how a batch is split over
        processes; without it each masked block draws from the global RNG.
        """
        cfg = self.config
        h, w = images.shape[-2:]
        p = cfg.patch_size
        if images.ndim != 4 or images.shape[1] != 3 or h % p or w % p:
            raise ValueError(
                f"images: expected a (B, 3, H, W) tensor with H and W multiples of {p}, "
                f"got shape {tuple(images.shape)}"
            )
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        x = (images - self.pixel_mean) / self.pixel_std
        x = x.to(self.backbone.dtype)  # a bf16 model takes fp32 images too
        x, grid = self.backbone.embed(x)  # (B, P+N, D)
        inputs = self.backbone.block_inputs(grid)  # per-block position inputs, if the family has any
        merging = self._merging_run(grid, inputs)
        first = cfg.depth - cfg.num_blocks
        masks_per_block: list[Tensor] = []
        classes_per_block: list[Tensor] = []
        for i, block in enumerate(self.backbone.blocks):
            if i == first:
                queries = self.q.weight[None].expand(x.shape[0], -1, -1).to(x.dtype)  # (B, K, D)
                x = torch.cat([queries, x], dim=1)
            attn_mask = None
            if i >= first:
                j = i - first
                if self.training or self._mask_active[j]:
                    mask_logits, class_logits = self._predict(self.backbone.norm(x), grid)
                    masks_per_block.append(mask_logits)
                    classes_per_block.append(class_logits)
                    if self._mask_active[j]:
                        noise = lift_noise[:, j] if lift_noise is not None else None
                        attn_mask = self._attn_mask(mask_logits, grid, self.attn_mask_probs[j], x.shape[1], noise)
            if merging is not None:  # proportional attention and positions of the merged tokens
                attn_mask, inputs = merging.attn_bias(x), merging.block_inputs
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, attn_mask, use_reentrant=False, **inputs)
            else:
                x = block(x, attn_mask, **inputs)
            if merging is not None:
                x = merging.after_block(i, x)
        x = self.backbone.norm(x)  # per token: unmerging after it is the same as before it
        mask_logits, class_logits = self._predict(merging.unmerge(x) if merging is not None else x, grid)
        return EoMTOutput(mask_logits, class_logits, masks_per_block, classes_per_block)

    def _merging_run(self, grid: tuple[int, int], inputs: dict[str, Tensor]) -> MergingRun | None:
        """The per-forward merging state when `token_merging` is set, else None.

        Raises ValueError in training mode and while masked attention is active (its masks are
        per original patch): merging is for the annealed inference network only.
        """
        if self.token_merging is None:
            return None
        if self.training or self.masked_attention_active:
            raise ValueError(
                "token_merging: inference only, on a network without masked attention; got "
                + ("training mode" if self.training else f"attn_mask_probs {self.attn_mask_probs.tolist()}")
                + " (set model.token_merging = None, or finish annealing: set_attn_mask_probs(0))"
            )
        return MergingRun(self.token_merging, self.backbone, grid, self.config.depth, inputs)

    def _predict(self, x: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Mask module on normed tokens (B, K+P+N, D) -> mask (B, K, 4h, 4w), class (B, K, C+1)."""
        k = self.config.num_queries
        q = x[:, :k]  # (B, K, D)
        class_logits = self.class_head(q)
        patches = x[:, k + self.backbone.num_prefix_tokens :]  # (B, N, D)
        patches = patches.reshape(x.shape[0], grid[0], grid[1], -1)  # (B, h, w, D) channels-last
        embed_t = self.mask_head(q).transpose(1, 2)  # (B, D, K)
        # One (4h*4w, D) x (D, K) matmul per image; the result is returned as a (B, K, 4h, 4w) view
        # with channels-last strides, which the resizing and per-pixel argmax downstream prefer.
        if fast_paths_on():
            mask_logits = fast_upscale.mask_logits(self.upscale, patches, embed_t)  # (B, 4h, 4w, K)
        else:
            features = self.upscale(patches)  # (B, 4h, 4w, D)
            mask_logits = (features.flatten(1, 2) @ embed_t).unflatten(1, features.shape[1:3])
        # (B, K, 4h, 4w) with channels-last strides, in training too: grid_sample over all
        # queries (the matcher) is about 5x faster on this layout than on a contiguous one.
        mask_logits = mask_logits.permute(0, 3, 1, 2)
        return mask_logits, class_logits

    def _attn_mask(
        self, mask_logits: Tensor, grid: tuple[int, int], prob: Tensor, n: int, noise: Tensor | None = None
    ) -> Tensor:
        """Boolean (B, 1, N, N) attention mask: query->patch allowed where the mask logit > 0.

        Each query's restriction is lifted with probability 1 - prob: where `noise` (B, K) uniform
        draws exceed prob (a fresh global-RNG draw when not given).
        """
        b, k = mask_logits.shape[:2]
        start = k + self.backbone.num_prefix_tokens
        inside = F.interpolate(mask_logits, size=grid, mode="bilinear").flatten(2) > 0  # (B, K, N_p)
        if noise is None:
            noise = torch.rand(b, k, device=mask_logits.device)
        lifted = noise > prob  # (B, K)
        inside = inside | lifted[..., None]
        mask = torch.ones(b, n, n, dtype=torch.bool, device=mask_logits.device)
        mask[:, :k, start:] = inside
        return mask[:, None]  # (B, 1, N, N), broadcast over heads

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_config(cls, config: ModelConfig | str, **overrides: Any) -> "EoMT":
        """A randomly initialised model from a `ModelConfig` or a preset name."""
        cfg = preset(config) if isinstance(config, str) else config
        if overrides:
            cfg = cfg.replace(**overrides)
        return cls(cfg)

    @classmethod
    def from_pretrained(cls, source: str | Path, **kwargs: Any) -> "EoMT":
        """Load a model from any supported source (`eomt.checkpoints.load_pretrained`).

        Checkpoint files, folders, hub ids, and preset names (random weights, with a warning);
        keyword arguments as `eomt.checkpoints.load_model`. The loader lives in `eomt.checkpoints`
        and is registered with `register_pretrained_loader` when `eomt` is imported, so that this
        module imports nothing from there. Raises RuntimeError when no loader is registered.
        """
        if _PRETRAINED_LOADER is None:
            raise RuntimeError(
                "EoMT.from_pretrained: no checkpoint loader registered; import eomt (or eomt.checkpoints) first"
            )
        return _PRETRAINED_LOADER(source, **kwargs)


PretrainedLoader = Callable[..., EoMT]
_PRETRAINED_LOADER: PretrainedLoader | None = None


def register_pretrained_loader(loader: PretrainedLoader) -> None:
    """Make `loader(source, **kwargs) -> EoMT` the one `EoMT.from_pretrained` calls.

    Registered by `eomt` (lazily) and by `eomt.checkpoints` at import: the dependency points from
    the checkpoints to the model, never back.
    """
    global _PRETRAINED_LOADER
    _PRETRAINED_LOADER = loader
