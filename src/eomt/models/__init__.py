"""The EoMT network and its ViT backbone."""

from eomt.models.eomt import EoMT, EoMTOutput

__all__ = ["EoMT", "EoMTOutput"]
