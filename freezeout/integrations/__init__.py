"""Adapters for training frameworks; each needs its optional extra and is imported on its own
(``from freezeout.integrations.lightning import FreezeOutCallback``,
``from freezeout.integrations.transformers import add_freezeout``), so ``import freezeout`` never does."""
