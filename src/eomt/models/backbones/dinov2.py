"""The DINOv2 backbone of EoMT: a plain ViT with DINOv2 conventions (timm parameter layout).

Implements `eomt.models.backbones.Backbone` (registered as "dinov2"). Patch 16 embedding, cls + register tokens without position embedding, learned patch position
embedding (resized bicubically when the input grid differs), pre-norm blocks with LayerScale and an
MLP (or packed SwiGLU for the giant size), and a final LayerNorm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eomt.config import ModelConfig
from eomt.models.fast.linear import linear, linear_gelu


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches projected to D channels: (B, 3, H, W) -> (B, D, H/p, W/p)."""

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection and SDPA.

    `mask` is a boolean (B, 1, N, N) or (B, heads, N, N) tensor, True where attention is allowed,
    or an additive float mask in x's dtype, e.g. (B, 1, 1, N) (proportional attention).
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        b, n, d = x.shape
        qkv = linear(x, self.qkv.weight, self.qkv.bias)
        qkv = qkv.reshape(b, n, 3, self.num_heads, d // self.num_heads)  # (B, N, 3, h, d/h)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, h, N, d/h)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x.transpose(1, 2).reshape(b, n, d)  # (B, N, D)
        return linear(x, self.proj.weight, self.proj.bias)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:  # fc1 -> exact GELU -> fc2
        x = linear_gelu(x, self.fc1.weight, self.fc1.bias)
        return linear(x, self.fc2.weight, self.fc2.bias)


class SwiGLUPacked(nn.Module):
    """SwiGLU with value and gate packed in one fc1 (timm `SwiGLUPacked`): silu(x1) * x2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        x12 = linear(x, self.fc1.weight, self.fc1.bias)
        h = x12.shape[-1] // 2  # slices, not `chunk`: an opset-17 ONNX graph has no opset-18 Split
        return linear(F.silu(x12[..., :h]) * x12[..., h:], self.fc2.weight, self.fc2.bias)


class Block(nn.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x))).

    `mask`: boolean (B, 1, N, N), True where attention is allowed, or None. A learned position
    embedding needs no per-block position input, so the block takes none.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.embed_dim
        self.norm1 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.attn = Attention(d, cfg.num_heads)
        self.ls1 = LayerScale(d, cfg.layerscale_init)
        self.norm2 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.mlp = SwiGLUPacked(d, cfg.mlp_hidden) if cfg.swiglu else Mlp(d, cfg.mlp_hidden)
        self.ls2 = LayerScale(d, cfg.layerscale_init)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        # x + gamma * y in one pass (addcmul) instead of a multiply and an add.
        x = torch.addcmul(x, self.ls1.gamma, self.attn(self.norm1(x), mask))
        return torch.addcmul(x, self.ls2.gamma, self.mlp(self.norm2(x)))


def resize_pos_embed(pos: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> Tensor:
    """Bicubic (antialiased) resize of a (1, h*w, D) patch position embedding to a new grid."""
    if tuple(old_grid) == tuple(new_grid):
        return pos
    d = pos.shape[-1]
    grid = pos.reshape(1, old_grid[0], old_grid[1], d).permute(0, 3, 1, 2)  # (1, D, h, w)
    grid = F.interpolate(grid.float(), size=new_grid, mode="bicubic", antialias=True, align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], d).to(pos.dtype)  # (1, N', D)


class DINOv2(nn.Module):
    """DINOv2-style ViT backbone. `embed` gives tokens [cls | registers | patches]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.embed_dim
        self.patch_size = cfg.patch_size
        self.grid_size = cfg.grid_size
        self.num_prefix_tokens = 1 + cfg.num_register_tokens
        self.patch_embed = PatchEmbed(cfg.patch_size, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.reg_token = nn.Parameter(torch.zeros(1, cfg.num_register_tokens, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size[0] * self.grid_size[1], d))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.normal_(self.reg_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights: the images are cast to it before the patch embedding."""
        return self.patch_embed.proj.weight.dtype

    def block_inputs(self, grid: tuple[int, int]) -> dict[str, Tensor]:
        """No per-block position inputs: positions are added once, in `embed`."""
        return {}

    def block_inputs_at(self, coords: Tensor) -> dict[str, Tensor]:
        """No per-block position inputs for merged tokens either (coords (B, M, 2) unused)."""
        return {}

    def pos_embed_for(self, grid: tuple[int, int]) -> Tensor:
        """The position embedding at token grid `grid` (resized if it differs from the stored one)."""
        return resize_pos_embed(self.pos_embed, self.grid_size, grid)

    def embed(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Normalised images (B, 3, H, W) -> tokens (B, 1 + R + N, D) and the token grid (H/p, W/p)."""
        x = self.patch_embed(x)  # (B, D, H/p, W/p)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)  # (B, N, D)
        x = x + self.pos_embed_for(grid)
        b = x.shape[0]
        prefix = torch.cat([self.cls_token, self.reg_token], dim=1).expand(b, -1, -1)  # (B, 1+R, D)
        return torch.cat([prefix, x], dim=1), grid
