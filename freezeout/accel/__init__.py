"""What makes frozen or training layers cheaper, or spreads them over devices.

``compile``: ``torch.compile`` per freezable layer, so that freezing recompiles each layer a bounded number of
times instead of the whole model on every freeze. ``ddp``: ``DistributedDataParallel`` rebuilt over what still
trains, so that frozen layers' gradients stop being all-reduced. ``fsdp``: FSDP2 modules of frozen layers
gathered once and kept whole, so that they stop being all-gathered; DCP checkpoints; byte counts. ``fold``:
BatchNorm folding for layers frozen by hand (``FreezeOut`` folds its own, ``freezeout.freezing.folding``).
"""

from . import ddp
from .compile import compile_blocks, uncompile_blocks
from .fold import fold_layer, is_folded, unfold_layer

__all__ = ["compile_blocks", "ddp", "fold_layer", "is_folded", "uncompile_blocks", "unfold_layer"]
