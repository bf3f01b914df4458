"""FreezeOut: accelerate training by progressively freezing layers (Brock et al., 2017).

The package's core is what a training loop needs and imports nothing of the rest: the modules at the top of this
folder (schedule, options, layers, groups, tensors, checks, and ``compat``, the one place that touches torch
internals) and its subsystems ``controller`` (FreezeOut), ``freezing`` (what a freeze does, folds included),
``discovery`` (find_layers) and ``cache`` (PrefixCache). This file, the facade, also offers ``accel``'s per-layer
compile. Around it: ``accel``
(per-layer compile, DDP, FSDP2), ``analysis`` (FLOPs, step-time curve, estimates, benchmark), ``integrations``
(Lightning, HF Trainer), ``experiment`` (the paper's study as an application: trainer, sweep, plots, models, data)
and ``cli`` (the command line).
"""

from .accel.compile import compile_blocks, uncompile_blocks
from .cache import CacheWarning, PrefixCache
from .controller import FreezeOut, ScheduleWarning
from .discovery import find_layers
from .freezing import FrozenInputWarning, freeze_layer, is_frozen, remove_effects
from .freezing.folding import FoldWarning
from .freezing.saved import saved_tensor_bytes
from .groups import param_groups, unwrap
from .options import FreezeOutOptions
from .schedule import STRATEGIES, freeze_times, layer_lr, learning_rates, num_frozen_at, progress

__version__ = "0.1.0"

__all__ = [
    "STRATEGIES",
    "CacheWarning",
    "FoldWarning",
    "FreezeOut",
    "FreezeOutOptions",
    "FrozenInputWarning",
    "PrefixCache",
    "ScheduleWarning",
    "__version__",
    "compile_blocks",
    "find_layers",
    "freeze_layer",
    "freeze_times",
    "is_frozen",
    "layer_lr",
    "learning_rates",
    "num_frozen_at",
    "param_groups",
    "progress",
    "remove_effects",
    "saved_tensor_bytes",
    "uncompile_blocks",
    "unwrap",
]
