"""What counts as a normalisation layer, for every rule that treats one apart (no weight decay, a model's head).

torch's own: every norm with running statistics (the BatchNorms, ``SyncBatchNorm``, the lazy and instance norms),
``LayerNorm``, ``GroupNorm`` and ``RMSNorm``; and, since a library's norm rarely subclasses these (Hugging Face's
``T5LayerNorm``, ``LlamaRMSNorm``), any class whose name ends in ``Norm``.
"""

from __future__ import annotations

from torch import nn

from .compat import NormBase

__all__ = ["NORMS", "is_norm"]

NORMS: tuple[type[nn.Module], ...] = (
    NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a normalisation layer (module doc)."""
    return isinstance(module, NORMS) or type(module).__name__.endswith("Norm")
