"""Token merging for inference: ALGM (Norouzi et al., CVPR 2024, arXiv 2406.09936) on EoMT's patches.

Training-free, two stages, as the EoMT paper applies it (Table 9, appendix "Token merging"):

1. Local merging (CLAP, conditional local average pooling) after block `local_after` (ALGM: in the
   first layer): every 2x2 window of patch tokens whose mean pairwise cosine similarity is >= tau
   becomes one token, the mean of the four, of size 4.
2. Global merging (GBM, global bipartite merging) after block `global_after` (ALGM: halfway through
   the network): the patch tokens are split alternately into two sets A and B, and each A token is
   paired with its most similar B token (its "node max", a cosine similarity). ALGM's adaptive count:
   the A tokens whose node max is at least the mean plus one standard deviation of the image's node
   maxima are averaged into their B tokens (size-weighted), so the count follows the image's own
   similarity statistics; `global_threshold` replaces the criterion by a fixed tau.

Batches: the smallest mergeable count over the images of a batch is merged in every image (the
EoMT paper's rule), the most similar windows / pairs first, so tensors stay dense. Each merged token
carries its size (how many original patches it stands for) and attention weighs keys by it
(proportional attention: log(size) added to the attention logits, which equals attending to
`size` copies of the token). Queries, cls and registers are never merged (size 1). A source map
(B, N) -> merged index gives every original patch its token back (`unmerge`) before the mask module.

Written from the papers' descriptions. Counting the merged tokens reads a number back to the host,
so a merging forward has data-dependent shapes: torch.compile breaks the graph there (no fullgraph)
and a static exported graph cannot express it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from eomt.errors import OptionError
from eomt.models.backbones.dinov3 import patch_coordinates


@dataclass(frozen=True)
class TokenMerging:
    """ALGM settings (inference only).

    threshold: tau of the local stage, the mean pairwise cosine similarity at or above which a 2x2
        window merges. ALGM sets it once per model from similarity statistics and reports 0.88
        for its ViT-S/B Segmenters; a value above 1 merges nothing (and switches the global stage
        off with it, so that "merge nothing" means the plain network).
    local_after: run local merging (CLAP) on the tokens after this many blocks (ALGM: 1, "in the
        first network layer").
    global_after: run global merging (GBM) after this many blocks; None = depth // 2 (ALGM:
        "halfway through the network"); 0 switches global merging off.
    global_threshold: None = ALGM's adaptive count in the global stage (an A token merges when its
        node max is >= mean + std of the image's node maxima); a float = a fixed tau instead (the
        A tokens whose node max is >= it).
    """

    threshold: float = 0.88
    local_after: int = 1
    global_after: int | None = None
    global_threshold: float | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.threshold) or not -1.0 <= self.threshold:
            raise ValueError(f"token_merging.threshold: {self.threshold!r} is not a cosine similarity (expected >= -1)")
        g = self.global_threshold
        if g is not None and (not math.isfinite(g) or g < -1.0):
            raise ValueError(f"token_merging.global_threshold: {g!r} is not a cosine similarity (expected >= -1, or None: adaptive)")
        if self.local_after < 1:
            raise ValueError(f"token_merging.local_after: {self.local_after} must be >= 1 (blocks run before merging)")

    def blocks(self, depth: int) -> tuple[int, int]:
        """(local, global) merge points as block counts for a ViT of `depth` blocks (global 0 = off).

        Raises ValueError when a point is outside the network or global merging comes first.
        """
        glob = depth // 2 if self.global_after is None else self.global_after
        if not self.local_after < depth or not (glob == 0 or self.local_after < glob < depth):
            raise ValueError(
                f"token_merging: local_after={self.local_after}, global_after={glob} do not fit a "
                f"{depth}-block ViT (expected 1 <= local_after < global_after < {depth}, or global_after=0)"
            )
        return self.local_after, glob


def as_token_merging(value: "TokenMerging | bool | float | None") -> TokenMerging | None:
    """None/False -> None (off); True -> the ALGM defaults; a float -> that tau; a TokenMerging as is."""
    if value is None or value is False:
        return None
    if value is True:
        return TokenMerging()
    if isinstance(value, TokenMerging):
        return value
    if isinstance(value, (int, float)):
        return TokenMerging(threshold=float(value))
    raise TypeError(f"token_merging: expected None, a bool, a threshold or a TokenMerging, got {type(value).__name__}")


def with_token_merging(model: Any, value: "TokenMerging | bool | float | None", copy_model: bool = False) -> Any:
    """`model` with `token_merging` set from `value` (`as_token_merging`); a shallow copy sharing
    the weights when `copy_model` (the caller's keeps its setting); unchanged when value is off.

    Raises OptionError for a bad value, a network without the setting (an exported graph has a
    fixed token count) or one whose masked attention is still active.
    """
    try:
        settings = as_token_merging(value)
    except (TypeError, ValueError) as e:
        raise OptionError(str(e)) from None
    if settings is None:
        return model
    if not hasattr(model, "token_merging"):
        raise OptionError("token_merging: needs an EoMT network; an exported graph has a fixed token count")
    if model.masked_attention_active:
        raise OptionError("token_merging: the model still uses masked attention (annealing unfinished); "
                          "merging needs the plain inference network")
    model = copy.copy(model) if copy_model else model
    model.token_merging = settings
    return model


class Merged(NamedTuple):
    """Patch tokens after merging: x (B, M, D), size (B, M) fp32, coords (B, M, 2) fp32 (mean patch
    centres, for RoPE), source (B, N) int64: the merged index of each original patch."""

    x: Tensor
    size: Tensor
    coords: Tensor
    source: Tensor


# ---------------------------------------------------------------- the two merge assignments
def window_ids(grid: tuple[int, int], device: torch.device | None = None) -> Tensor:
    """2x2 window index of each patch of a row-major (h, w) grid, (N,) int64; -1 for patches of an
    odd last row / column (they are never merged locally)."""
    h, w = grid
    rows = torch.arange(h, device=device)[:, None]
    cols = torch.arange(w, device=device)[None, :]
    ids = (rows // 2) * (w // 2) + cols // 2  # (h, w)
    inside = (rows < h - h % 2) & (cols < w - w % 2)
    return torch.where(inside, ids, -1).flatten()


def window_similarity(patches: Tensor, grid: tuple[int, int]) -> Tensor:
    """Mean pairwise cosine similarity of the 4 tokens of each 2x2 window: (B, N, D) -> (B, W) fp32."""
    b, _, d = patches.shape
    h, w = grid[0] // 2 * 2, grid[1] // 2 * 2
    f = torch.nn.functional.normalize(patches.float(), dim=-1).reshape(b, grid[0], grid[1], d)
    f = f[:, :h, :w].reshape(b, h // 2, 2, w // 2, 2, d).permute(0, 1, 3, 2, 4, 5)  # (B, h/2, w/2, 2, 2, D)
    f = f.reshape(b, -1, 4, d)  # (B, W, 4, D)
    s = f.sum(2)  # sum_ij <fi, fj> = |sum fi|^2; the 4 diagonal terms are 1
    return ((s * s).sum(-1) - 4.0) / 12.0  # mean over the 12 ordered off-diagonal pairs


def batch_count(mergeable: Tensor) -> int:
    """The batch rule: the smallest number of mergeable items over the images, (B, W) bool -> int."""
    return int(mergeable.sum(1).min())


def local_assignment(scores: Tensor, windows: Tensor, count: int) -> tuple[Tensor, int]:
    """Destinations of CLAP: the `count` best windows of each image become one token each.

    scores (B, W) similarity per window, windows (N,) window of each patch (-1: none).
    Returns dest (B, N) int64 into [0, M) and M = N - 3 count: merged windows first (in window
    order), then the other patches in grid order.
    """
    b, n = scores.shape[0], windows.shape[0]
    chosen = torch.zeros_like(scores, dtype=torch.bool)
    chosen.scatter_(1, scores.topk(count, dim=1).indices, True)  # (B, W)
    rank = chosen.long().cumsum(1) - 1  # (B, W) rank among the chosen windows
    w = windows.clamp(min=0).expand(b, n)  # (B, N)
    merged = chosen.gather(1, w) & (windows >= 0)  # (B, N)
    rest = count + (~merged).long().cumsum(1) - 1  # (B, N) rank among the kept patches
    return torch.where(merged, rank.gather(1, w), rest), n - 3 * count


def adaptive_threshold(node_max: Tensor, layer: int = 1) -> Tensor:
    """ALGM's adaptive GBM criterion per image: mean + std / layer of the node maxima (B, Ma) ->
    (B, 1); `layer` is the 1-based index of the block GBM follows."""
    return node_max.mean(1, keepdim=True) + node_max.std(1, keepdim=True, correction=0) / layer


def global_assignment(x: Tensor, threshold: float | None = None, layer: int = 1) -> tuple[Tensor, int]:
    """Destinations of GBM on tokens (B, M, D): A = even positions, B = odd positions.

    Each A token is paired with its most similar B token (cosine similarity: its node max); those
    whose node max is >= the threshold may merge (None: `adaptive_threshold`, ALGM's count per
    image); the batch rule picks the count, the most similar first. Returns dest (B, M) int64 and
    the new count M - r (the kept tokens in their order; a merged A token points at its B token).
    """
    b, m, _ = x.shape
    f = torch.nn.functional.normalize(x.float(), dim=-1)
    sim = f[:, 0::2] @ f[:, 1::2].transpose(1, 2)  # (B, Ma, Mb)
    best, match = sim.max(-1)  # (B, Ma)
    if best.shape[1] < 2:
        return torch.arange(m, device=x.device).expand(b, m), m
    r = batch_count(best >= (adaptive_threshold(best, layer) if threshold is None else threshold))
    if r == 0:
        return torch.arange(m, device=x.device).expand(b, m), m
    gone_a = torch.zeros_like(best, dtype=torch.bool)
    gone_a.scatter_(1, best.topk(r, dim=1).indices, True)  # (B, Ma)
    gone = torch.zeros(b, m, dtype=torch.bool, device=x.device)
    gone[:, 0::2] = gone_a
    rank = (~gone).long().cumsum(1) - 1  # (B, M) position among the kept tokens
    target = torch.zeros(b, m, dtype=torch.long, device=x.device)
    target[:, 0::2] = rank.gather(1, 2 * match + 1)  # an A token's destination: its B token
    return torch.where(gone, target, rank), m - r


def merge(state: Merged, dest: Tensor, m: int) -> Merged:
    """Size-weighted means of the tokens (and coordinates) sharing a destination: dest (B, M_old)."""
    b, _, d = state.x.shape
    w = state.size[..., None]  # (B, M_old, 1)
    size = state.size.new_zeros(b, m).scatter_add_(1, dest, state.size)  # (B, M)
    feats = torch.cat([state.x.float() * w, state.coords * w], dim=-1)  # (B, M_old, D + 2)
    summed = feats.new_zeros(b, m, d + 2).scatter_add_(1, dest[..., None].expand(-1, -1, d + 2), feats)
    summed = summed / size[..., None]
    return Merged(summed[..., :d].to(state.x.dtype), size, summed[..., d:], dest.gather(1, state.source))


def unmerge(x: Tensor, source: Tensor) -> Tensor:
    """Every original patch gets its merged token back: x (B, M, D), source (B, N) -> (B, N, D)."""
    return x.gather(1, source[..., None].expand(-1, -1, x.shape[-1]))


def attention_bias(size: Tensor, total: int, dtype: torch.dtype) -> Tensor:
    """Proportional attention as an additive SDPA mask (B, 1, 1, T): log(size) on the trailing M
    patch tokens, 0 on the leading T - M (queries, cls, registers: size 1)."""
    lead = size.new_zeros(size.shape[0], total - size.shape[1])
    return torch.cat([lead, size.log()], dim=1)[:, None, None].to(dtype)


# ---------------------------------------------------------------- one forward pass
class MergingRun:
    """The merging state of one EoMT forward: call `after_block(i, x)` after block i, pass
    `attn_bias(x)` and `block_inputs` to the blocks, and `unmerge(x)` before the mask module.

    `backbone` must have `block_inputs_at(coords (B, M, 2))` (position inputs of merged tokens).
    """

    def __init__(self, settings: TokenMerging, backbone: Any, grid: tuple[int, int], depth: int,
                 block_inputs: dict[str, Tensor]) -> None:
        self.settings = settings
        self.local, self.glob = settings.blocks(depth)
        self.backbone = backbone
        self.grid = grid
        self.state: Merged | None = None
        self.block_inputs = block_inputs
        self._bias: Tensor | None = None

    def after_block(self, i: int, x: Tensor) -> Tensor:
        """Tokens (B, T, D) after block i (0-based) -> tokens (B, T', D), merged where due."""
        done = i + 1
        if done not in (self.local, self.glob):
            return x
        n = self.state.x.shape[1] if self.state is not None else self.grid[0] * self.grid[1]
        lead, patches = x[:, : x.shape[1] - n], x[:, x.shape[1] - n :]
        if done == self.local:
            windows = window_ids(self.grid, x.device)
            scores = window_similarity(patches, self.grid)  # (B, W)
            count = batch_count(scores >= self.settings.threshold) if scores.shape[1] else 0
            if count == 0:
                return x
            dest, m = local_assignment(scores, windows, count)
            b = x.shape[0]
            coords = patch_coordinates(self.grid, x.device)[None].expand(b, -1, -1)  # (B, N, 2)
            ones = torch.ones(b, n, device=x.device)
            source = torch.arange(n, device=x.device).expand(b, n)
            self.state = merge(Merged(patches, ones, coords, source), dest, m)
        else:
            if self.settings.threshold > 1.0:  # "merge nothing" holds for both stages
                return x
            dest, m = global_assignment(patches, self.settings.global_threshold, self.glob)
            if m == n:
                return x
            if self.state is None:  # nothing merged locally: start from the full grid
                b = x.shape[0]
                self.state = Merged(patches, torch.ones(b, n, device=x.device),
                                    patch_coordinates(self.grid, x.device)[None].expand(b, -1, -1),
                                    torch.arange(n, device=x.device).expand(b, n))
            self.state = merge(self.state._replace(x=patches), dest, m)
        self.block_inputs = self.backbone.block_inputs_at(self.state.coords)
        self._bias = None
        return torch.cat([lead, self.state.x], dim=1)

    def attn_bias(self, x: Tensor) -> Tensor | None:
        """The proportional-attention mask (B, 1, 1, T) for tokens x (B, T, D); None before merging."""
        if self.state is None:
            return None
        if self._bias is None or self._bias.shape[-1] != x.shape[1]:
            self._bias = attention_bias(self.state.size, x.shape[1], x.dtype)
        return self._bias

    def unmerge(self, x: Tensor) -> Tensor:
        """Tokens (B, T, D) with M merged patches -> (B, T - M + N, D) on the full patch grid."""
        if self.state is None:
            return x
        m = self.state.x.shape[1]
        return torch.cat([x[:, : x.shape[1] - m], unmerge(x[:, x.shape[1] - m :], self.state.source)], dim=1)

