"""What torch.compile's own machinery says that tests must let pass."""

from __future__ import annotations

import pytest

# Dynamo probes ``.grad`` of the (non-leaf) activations a compiled graph starts from (each compiled layer's input, a
# frame resumed after a graph break such as the graph cut's eager decision); torch hides the warning that probe
# raises, except where warnings are errors, as here.
DYNAMO_GRAD_PROBE = pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")
