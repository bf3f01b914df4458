"""What freezing a layer does to the user's modules, as small named effects (docs/METHOD.md, "What frozen means").

Each is installed when its layer freezes (and again when a resumed ``FreezeOut`` loads its state), recorded per
frozen layer (``FrozenLayer``), and removed by ``FreezeOut.close()``:

- ``StopGradients``: no gradient, no optimizer state, LR 0 (``requires_grad`` given back on removal);
- ``InferenceMode``: every module of the layer runs in eval mode inside its call, whatever ``.training`` says;
- ``GraphCut``: what flows into the frozen layers is cut when it is a tied weight or a hooked activation, so
  they stay out of autograd in every forward;
- ``BatchNormFold`` (``fuse=True``, the default): BatchNorms folded into the adjacent convolutions for training
  forwards, only where the traced dataflow proves the fold exact; ``StemFold`` the same across the modules of a
  layer that is a list (a stem held by the model), proven from the forward that calls them.
"""

from .base import Effect, FrozenLayer, OwnedHook, has_effects, remove_effects
from .cut import GraphCut, Leak, Prefix
from .folding import BatchNormFold, active_fold, find_fold, folds_running
from .grads import StopGradients
from .mode import InferenceMode, in_inference_mode, requested_training
from .stem import StemFold

__all__ = [
    "BatchNormFold",
    "Effect",
    "FrozenLayer",
    "GraphCut",
    "InferenceMode",
    "Leak",
    "OwnedHook",
    "Prefix",
    "StemFold",
    "StopGradients",
    "active_fold",
    "find_fold",
    "folds_running",
    "has_effects",
    "in_inference_mode",
    "remove_effects",
    "requested_training",
]
