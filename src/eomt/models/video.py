"""VidEoMT: EoMT on video, with the queries of one frame carried to the next (query propagation).

Video EoMT (CVPR 2026, tue-mps/videomt `modeling/backbone/videomt.py`) adds one layer to an image
EoMT, the query-propagation linear `query_updater` (D -> D, with bias):

- the first L - L2 blocks see every frame of a clip at once (a batch of B*T images);
- the last L2 blocks (the query blocks) then run frame by frame, in order. Frame 0 joins the
  learned queries `q` in front of its tokens, as the image model does; frame t > 0 joins
  `query_updater(out_{t-1}) + q`, where out_{t-1} are the K query tokens that left the last block
  on frame t-1, *before* the final norm (official `NORM_QUERIES: False`, the default and the
  setting of every DINOv2 release and of transformers' `VideomtForUniversalSegmentation`; the
  official DINOv3 VIPSeg / VSPW configs set it True: `norm_queries=True` propagates the normed
  queries instead);
- no masked attention (official `MASKED: False`): `attn_mask_probs` of the image model is ignored;
- each frame is predicted by the image model's mask module on the normed tokens, so query k of
  every frame is one object: the query index is the track identity.

Training (`forward(clip, per_block=True)`) adds the official auxiliary predictions: on every frame,
one at the input of each query block (block 0's input: the starting queries joined to the frame's
tokens), made by the same mask module on the tokens *as they enter the block, not normed* (the
official `segmenter` calls `_predict(x_frame)`; normed by the final norm only with `norm_queries`).
The image model predicts on normed tokens there instead; the final prediction is normed in both.

Nothing but the previous frame's queries is remembered, so a video can be run in one call
(`forward(clip)`), in chunks, or one frame at a time (`step`), carrying a `VideoState`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from eomt.config import ModelConfig
from eomt.models.eomt import EoMT


class VideoState(NamedTuple):
    """What one frame hands to the next: the query tokens the next frame starts from.

    queries: (B, K, D) = query_updater(previous output queries) + q, or None before the first frame
    (the next frame then starts from the learned queries). frame: index of the next frame.
    """

    queries: Tensor | None = None
    frame: int = 0


class VideoOutput(NamedTuple):
    """Per-frame predictions of a clip (B, T frames).

    class_logits (B, T, K, C+1), mask_logits (B, T, K, H/4, W/4); queries (B, T, K, D): the output
    query tokens of each frame, the ones propagated (before the final norm unless `norm_queries`);
    state: the `VideoState` after the last frame, to continue the video with.
    mask_logits_per_block / class_logits_per_block (`forward(..., per_block=True)` only, else
    None): one (B, T, K, H/4, W/4) / (B, T, K, C+1) tensor per query block, the prediction at
    that block's input (module docstring), first block first.
    """

    class_logits: Tensor
    mask_logits: Tensor
    queries: Tensor
    state: VideoState
    mask_logits_per_block: tuple[Tensor, ...] | None = None
    class_logits_per_block: tuple[Tensor, ...] | None = None


class FrameOutput(NamedTuple):
    """Predictions of one frame: class_logits (B, K, C+1), mask_logits (B, K, H/4, W/4),
    queries (B, K, D) as in `VideoOutput`."""

    class_logits: Tensor
    mask_logits: Tensor
    queries: Tensor


class VidEoMT(nn.Module):
    """An `EoMT` (`self.eomt`: backbone, queries, mask module) plus the propagation linear.

    `forward(clip)` takes RGB frames (B, T, 3, H, W), float in [0, 1] or uint8, H and W multiples
    of the patch size; ImageNet normalisation happens inside, as for the image model.
    `query_updater` starts as PyTorch's default `nn.Linear` (Kaiming-uniform weight, uniform bias),
    which is how the official code starts it from an image ("segmenter") checkpoint: it builds the
    layer and loads the image weights non-strictly, without touching it.
    """

    def __init__(self, config: ModelConfig | EoMT, norm_queries: bool = False) -> None:
        super().__init__()
        self.eomt = config if isinstance(config, EoMT) else EoMT(config)
        d = self.eomt.config.embed_dim
        weight = self.eomt.q.weight
        self.query_updater = nn.Linear(d, d, device=weight.device, dtype=weight.dtype)
        self.norm_queries = norm_queries

    @classmethod
    def from_image(cls, model: EoMT, norm_queries: bool = False) -> "VidEoMT":
        """A VidEoMT around the image model `model` (its parameters are shared, not copied) with a
        fresh propagation linear, as the official recipe starts video training."""
        return cls(model, norm_queries=norm_queries)

    @property
    def config(self) -> ModelConfig:
        """The image model's config (the video model adds no field to it)."""
        return self.eomt.config

    def init_state(self) -> VideoState:
        """The state before a video's first frame (the learned queries start it)."""
        return VideoState()

    # ------------------------------------------------------------------ forward
    def forward(self, clip: Tensor, state: VideoState | None = None, per_block: bool = False) -> VideoOutput:
        """Clip (B, T, 3, H, W) -> `VideoOutput`; `state` continues a video from an earlier call.

        per_block: also return the prediction at each query block's input on every frame (the
        auxiliary losses of training); the final predictions are the same either way.

        Raises ValueError for a tensor of another shape (the message names the expected one), for
        a state of another batch size, and when the image model has token merging switched on.
        """
        p = self.config.patch_size
        if clip.ndim != 5 or clip.shape[2] != 3 or clip.shape[-2] % p or clip.shape[-1] % p:
            raise ValueError(
                f"clip: expected a (B, T, 3, H, W) tensor with H and W multiples of {p}, got shape {tuple(clip.shape)}"
            )
        if getattr(self.eomt, "token_merging", None) is not None:  # the image model's merging hook
            raise ValueError("token_merging: not implemented for VidEoMT; set model.eomt.token_merging = None")
        b, t = clip.shape[:2]
        state = state or VideoState()
        if state.queries is not None and state.queries.shape[0] != b:
            raise ValueError(f"state: queries of {state.queries.shape[0]} videos, the clip has {b} (B); "
                             "continue each video with its own state, or start with init_state()")
        tokens, grid, inputs = self._encode(clip.flatten(0, 1))  # (B*T, P+N, D)
        tokens = tokens.unflatten(0, (b, t))  # (B, T, P+N, D)
        queries = state.queries
        normed, outputs = [], []
        block_inputs: list[list[Tensor]] | None = [] if per_block else None
        for i in range(t):  # in order: frame i starts from frame i-1's queries
            x = self._query_blocks(tokens[:, i], queries, inputs, block_inputs)  # (B, K+P+N, D)
            y = self.eomt.backbone.norm(x)
            out = (y if self.norm_queries else x)[:, : self.config.num_queries]  # (B, K, D)
            queries = self.query_updater(out) + self.eomt.q.weight.to(out.dtype)
            normed.append(y)
            outputs.append(out)
        # One mask-module call for all frames (the upscale convolutions batch over B*T).
        normed_all = torch.stack(normed, dim=1).flatten(0, 1)  # (B*T, K+P+N, D)
        mask_logits, class_logits = self.eomt._predict(normed_all, grid)
        masks_per_block = classes_per_block = None
        if block_inputs is not None:
            masks_per_block, classes_per_block = self._block_predictions(block_inputs, b, t, grid)
        return VideoOutput(
            class_logits.unflatten(0, (b, t)),  # (B, T, K, C+1)
            mask_logits.unflatten(0, (b, t)),  # (B, T, K, H/4, W/4)
            torch.stack(outputs, dim=1),  # (B, T, K, D)
            VideoState(queries, state.frame + t),
            masks_per_block,
            classes_per_block,
        )

    def _block_predictions(
        self, block_inputs: list[list[Tensor]], b: int, t: int, grid: tuple[int, int]
    ) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        """The mask module on each query block's input tokens, all frames of a block in one call.

        block_inputs[i][j]: frame i's tokens (B, K+P+N, D) entering query block j, not normed.
        Returns per block (B, T, K, H/4, W/4) mask and (B, T, K, C+1) class logits.
        """
        masks, classes = [], []
        for j in range(len(block_inputs[0])):
            x = torch.stack([frame[j] for frame in block_inputs], dim=1).flatten(0, 1)  # (B*T, K+P+N, D)
            if self.norm_queries:
                x = self.eomt.backbone.norm(x)
            mask_logits, class_logits = self.eomt._predict(x, grid)
            masks.append(mask_logits.unflatten(0, (b, t)))  # (B, T, K, H/4, W/4)
            classes.append(class_logits.unflatten(0, (b, t)))  # (B, T, K, C+1)
        return tuple(masks), tuple(classes)

    def step(self, frame: Tensor, state: VideoState | None = None) -> tuple[FrameOutput, VideoState]:
        """One frame (B, 3, H, W) -> (`FrameOutput`, the state for the next frame).

        The same computation as `forward` on a clip of that one frame, so streaming a video frame
        by frame gives the clip call's predictions (tests/models/test_video.py says how closely).
        """
        if frame.ndim != 4:
            raise ValueError(f"frame: expected a (B, 3, H, W) tensor, got shape {tuple(frame.shape)}")
        out = self.forward(frame[:, None], state)
        return FrameOutput(out.class_logits[:, 0], out.mask_logits[:, 0], out.queries[:, 0]), out.state

    # ------------------------------------------------------------------ parts
    def _encode(self, images: Tensor) -> tuple[Tensor, tuple[int, int], dict[str, Tensor]]:
        """Images (N, 3, H, W) -> tokens after the first L - L2 blocks (N, P+N_p, D), the token
        grid, and the per-block position inputs (RoPE tables for DINOv3, none for DINOv2)."""
        eomt = self.eomt
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        x = ((images - eomt.pixel_mean) / eomt.pixel_std).to(eomt.backbone.dtype)
        x, grid = eomt.backbone.embed(x)  # (N, P+N_p, D)
        inputs = eomt.backbone.block_inputs(grid)
        for block in eomt.backbone.blocks[: self.config.depth - self.config.num_blocks]:
            x = self._run(block, x, inputs)
        return x, grid, inputs

    def _query_blocks(
        self, tokens: Tensor, queries: Tensor | None, inputs: dict[str, Tensor],
        block_inputs: list[list[Tensor]] | None = None,
    ) -> Tensor:
        """One frame's tokens (B, P+N, D) and its starting queries (B, K, D; None: the learned ones)
        through the query blocks -> (B, K+P+N, D), before the final norm. `block_inputs`, when
        given, gets the list of the tokens entering each query block (for `_block_predictions`)."""
        q = self.eomt.q.weight.to(tokens.dtype)
        if queries is None:
            queries = q[None].expand(tokens.shape[0], -1, -1)  # (B, K, D)
        x = torch.cat([queries.to(tokens.dtype), tokens], dim=1)
        seen: list[Tensor] = []  # kept only for training's per-block predictions
        for block in self.eomt.backbone.blocks[self.config.depth - self.config.num_blocks :]:
            if block_inputs is not None:
                seen.append(x)
            x = self._run(block, x, inputs)
        if block_inputs is not None:
            block_inputs.append(seen)
        return x

    def _run(self, block: nn.Module, x: Tensor, inputs: dict[str, Tensor]) -> Tensor:
        """A block without an attention mask; recomputed in the backward pass when the image
        model's `gradient_checkpointing` is on (training)."""
        if self.eomt.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, None, use_reentrant=False, **inputs)
        return block(x, None, **inputs)
