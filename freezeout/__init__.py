"""FreezeOut: accelerate training by progressively freezing layers (Brock et al., 2017)."""

from .compiled import compile_blocks, uncompile_blocks
from .controller import FreezeOut
from .discovery import find_layers
from .freezing import freeze_layer, is_frozen
from .groups import param_groups, unwrap
from .measure import saved_tensor_bytes
from .schedule import freeze_times, layer_lr, learning_rates, num_frozen_at, progress

__version__ = "0.1.0"

__all__ = [
    "FreezeOut",
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
    "saved_tensor_bytes",
    "uncompile_blocks",
    "unwrap",
]
