"""Measuring and predicting FreezeOut's saving on a user's model, before and after training.

``flops``: per-layer forward FLOPs and the check that the layers are the model's forward path; ``cost``: the
paper's cost model and the step-time integral as pure functions; ``timing``: the measured step time with the
first ``k`` layers frozen; ``estimate``: both predictions for a model; ``bench``: real training loops, FreezeOut
against the baseline, next to the predictions; ``memory``: a step's peak memory at a batch, predicted from two
small ones, against the memory available.
"""

from .bench import BenchConfig, BenchResult, run_bench
from .estimate import estimate_saving, predict

__all__ = ["BenchConfig", "BenchResult", "estimate_saving", "predict", "run_bench"]
