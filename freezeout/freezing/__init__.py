"""What freezing a layer does to the user's modules, as small named effects (docs/METHOD.md, "What frozen means").

Each is installed when its layer freezes (and again when a resumed ``FreezeOut`` loads its state), recorded per
frozen layer (``FrozenLayer``), and removed by ``FreezeOut.close()``:

- ``StopGradients``: no gradient, no optimizer state, LR 0 (``requires_grad`` given back on removal);
- ``InferenceMode``: every module of the layer reads ``training = False`` (its class swapped for a frozen form),
  however it is called and whatever sets its mode;
- ``GraphCut``: what flows into the frozen layers is cut when it is a tied weight or an activation made to require
  grad inside the forward, so they stay out of autograd; anything else keeps its gradient, and is named;
- with ``fuse=True``, the folds of ``freezeout.freezing.folding``.

``FrozenPrefix`` holds a model's frozen layers; ``FirstPass`` and ``judge`` (``guard``) check the layers on the
first training forward and say what the cut found.
"""

from .cut import CutState, GraphCut, Leak
from .effect import Effect, FrozenLayer, OwnedHook
from .forwards import OwnedForward, pop_forward, push_forward
from .grads import StopGradients
from .guard import FirstPass, FrozenInputWarning, judge
from .mode import InferenceMode, in_inference_mode, requested_training
from .prefix import FrozenPrefix, freeze_layer, is_frozen
from .strip import has_effects, remove_effects

__all__ = [
    "CutState",
    "Effect",
    "FirstPass",
    "FrozenInputWarning",
    "FrozenLayer",
    "FrozenPrefix",
    "GraphCut",
    "InferenceMode",
    "Leak",
    "OwnedForward",
    "OwnedHook",
    "StopGradients",
    "freeze_layer",
    "has_effects",
    "in_inference_mode",
    "is_frozen",
    "judge",
    "pop_forward",
    "push_forward",
    "remove_effects",
    "requested_training",
]
