"""Adapters for training frameworks; each needs its optional extra and is imported on its own
(``from freezeout.integrations.lightning import FreezeOutCallback``), so ``import freezeout`` never does."""
