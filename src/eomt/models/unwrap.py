"""`unwrap_compiled`: the module a `torch.compile` wrapper holds."""

from __future__ import annotations

from torch import nn


def unwrap_compiled(module: nn.Module) -> nn.Module:
    """The original module of a `torch.compile`d one (its `_orig_mod`); any other module as it is.

    The parameters are shared: saving or loading the unwrapped module uses the plain key names
    (no `_orig_mod.` infix).
    """
    return getattr(module, "_orig_mod", module)
