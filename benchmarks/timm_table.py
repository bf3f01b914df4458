"""docs/MODELS.md, its timm section: what ``find_layers`` finds on timm's models and what freezing them buys, on CPU.

timm is not a dependency of freezeout, nor of its tests (they use look-alikes written here): this probe imports
it from a separate folder (``--site``), installed there with

    .venv/bin/pip install --no-deps --target /work/timm_site timm huggingface_hub safetensors pyyaml pillow

and a stand-in for ``torchvision`` (timm imports ``FrozenBatchNorm2d`` and its data transforms from it at import
time; no model built here uses them). Models are built with ``pretrained=False`` (no download), 10 classes. For
each: the layers found, the share of parameters that freeze, saved-for-backward bytes and step time with none,
half and all of the layers frozen (``step_time_curve`` at those three k's, the k's alternated round robin, each a
median), and how many BatchNorms of the layers fold when all are frozen.

    PYTHONPATH=. .venv/bin/python benchmarks/timm_table.py            # ~5 min on this CPU

Writes benchmarks/results/timm_table.json and the timm section of docs/MODELS.md (both atomically).
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import os
import sys
import time
import types
from pathlib import Path
from typing import Any

import torch
from models_table import CACHE_MARK, TIMM_MARK, abbreviate, busy, layer_names
from torch import nn

from freezeout import find_layers
from freezeout.analysis.timing import step_time_curve
from freezeout.compat import BatchNormBase
from freezeout.experiment.runfiles import atomic_bytes, atomic_json
from freezeout.freezing import FrozenPrefix
from freezeout.layers import as_layers

BATCH = 4
# name -> (timm model, input size, extra create_model arguments)
MODELS: dict[str, tuple[str, int, dict[str, Any]]] = {
    "ViT": ("vit_tiny_patch16_224", 64, {"img_size": 64}),
    "ResNet": ("resnet18", 64, {}),
    "ConvNeXt": ("convnext_atto", 64, {}),
    "EfficientNet": ("efficientnet_b0", 64, {}),
    "MobileNetV3": ("mobilenetv3_large_100", 64, {}),
    "Swin": ("swin_tiny_patch4_window7_224", 64, {"img_size": 64, "window_size": 2}),
    "DenseNet": ("densenet121", 64, {}),
    "RegNet": ("regnetx_002", 64, {}),
}


class _Anything(type):
    """A name timm imports from torchvision and never uses here: any attribute, any call."""

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything(name, (), {})

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return cls


class _StandIn(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything(name, (), {})


class _TorchvisionStandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _StandIn(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        if module.__name__ == "torchvision.ops.misc":
            module.FrozenBatchNorm2d = type("FrozenBatchNorm2d", (nn.Module,), {})


def import_timm(site: Path) -> Any:
    sys.meta_path.insert(0, _TorchvisionStandIn())
    sys.path.insert(0, str(site))
    import timm

    return timm


def folds(model: nn.Module, layers: list, x: torch.Tensor) -> tuple[int, int]:
    """(BatchNorms of the layers that fold with all frozen, BatchNorms of the layers), on the model itself."""
    items = as_layers(layers)
    prefix = FrozenPrefix(items, fuse=True)
    prefix.freeze_to(len(items))
    model.train()
    model(x)  # a training forward: each frozen layer's first call proves and confirms its folds
    effects = [e for record in prefix.records for e in record.effects]
    ran = {id(f.pair.bn) for e in effects for f in getattr(e, "folds", {}).values() if f.weight is not None}
    prefix.close()
    bns = {id(m) for layer in items for m in layer.all_modules() if isinstance(m, BatchNormBase)}
    return len(ran & bns), len(bns)


def measure(timm: Any, name: str, repeats: int) -> dict[str, Any]:
    arch, size, extra = MODELS[name]
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=10, **extra)
    x = torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    layers = find_layers(model, x[:1])
    names = layer_names(model, layers)
    n = len(layers)
    inside = {id(p) for layer in as_layers(layers) for p in layer.parameters()}
    total = sum(p.numel() for p in model.parameters())
    frozen = sum(p.numel() for p in model.parameters() if id(p) in inside)
    folded, bns = folds(model, layers, x)
    curve = step_time_curve(model, layers, x, ks=[0, n // 2, n], repeats=repeats, warmup=1)
    times, saved = curve["step_times"], {int(k): v for k, v in curve["saved_bytes_by_k"].items()}
    row = {
        "model": name,
        "timm": arch,
        "input": f"{BATCH} x 3 x {size} x {size}",
        "parameters": total,
        "frozen_parameters": frozen,
        "num_layers": n,
        "layers": names,
        "layers_short": abbreviate(names),
        "folds": folded,
        "batchnorms": bns,
        "step_seconds": {"none": times[0], "half": times[n // 2], "all": times[n]},
        "saved_bytes": {"none": saved[0], "half": saved[n // 2], "all": saved[n]},
        "seconds": time.perf_counter() - start,
    }
    print(
        f"{name:<13} {n:>3} layers  frozen {frozen / total:6.1%} of params  saved {saved[0] / 2**20:7.2f} MiB x "
        f"{saved[n // 2] / saved[0]:.2f} / {saved[n] / saved[0]:.2f}  step {times[0] * 1e3:6.1f} ms x "
        f"{times[n // 2] / times[0]:.2f} / {times[n] / times[0]:.2f}  folds {folded}/{bns}  ({row['seconds']:.0f} s)",
        flush=True,
    )
    return row


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        TIMM_MARK,
        "## timm models",
        "",
        "Produced by `benchmarks/timm_table.py` (numbers in `benchmarks/results/timm_table.json`); timm "
        f"{meta['timm']} models built with `pretrained=False`, 10 classes, `find_layers(model, x[:1])` as is.",
        "",
        "| model | layers found | params frozen | saved for backward: none frozen | half / all (x none) "
        "| step: none frozen | half / all (x none) | BatchNorms folded |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        s, t = r["saved_bytes"], r["step_seconds"]
        lines.append(
            f"| **{r['model']}** (`{r['timm']}`; {r['input']}) | {r['num_layers']}: {r['layers_short']} "
            f"| {r['frozen_parameters'] / r['parameters']:.1%} "
            f"| {s['none'] / 2**20:.2f} MiB | {s['half'] / s['none']:.2f} / {s['all'] / s['none']:.2f} "
            f"| {t['none'] * 1e3:.0f} ms | {t['half'] / t['none']:.2f} / {t['all'] / t['none']:.2f} "
            f"| {r['folds']} of {r['batchnorms']} |"
        )
    lines += [
        "",
        "Params frozen: the share of the model's parameters in the layers (the rest, the head, trains to the end). "
        f"Step: the median of {meta['repeats']} timed steps per k (SGD), the three k's alternated round robin. "
        "BatchNorms folded: those of the layers that fold into a convolution with all layers frozen "
        "(`fuse=True`, each kind of call proven and confirmed on its first real tensors: docs/METHOD.md); timm's "
        "`BatchNormAct2d` folds and keeps its activation; a stem made of several top modules (`conv1+...`) keeps "
        "its BatchNorm; a BatchNorm before a convolution with an activation between (DenseNet's pre-activation) "
        "cannot fold, and in DenseNet-121 no call of a layer is proven, so none folds: it runs as `fuse=False`.",
        "",
        f"Measured on {meta['machine']}. {busy(meta['load_average'], meta['cpus'])}",
        "",
        "Reproduce: `PYTHONPATH=. .venv/bin/python benchmarks/timm_table.py --site /path/to/timm_site` (timm installed "
        f"there with `pip install --no-deps --target`; about {meta['minutes']:.0f} minutes here).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--site", type=Path, default=Path("/work/timm_site"), help="folder timm is installed in")
    ap.add_argument("--repeats", type=int, default=5, help="timed steps per k (median)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--only", nargs="+", choices=list(MODELS), help="measure only these (nothing is written)")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/timm_table.json"))
    ap.add_argument("--markdown", type=Path, default=Path("docs/MODELS.md"))
    args = ap.parse_args()
    timm = import_timm(args.site)
    torch.set_num_threads(args.threads)
    start, load = time.perf_counter(), os.getloadavg()[0]
    rows = [measure(timm, name, args.repeats) for name in (args.only or MODELS)]
    if args.only:
        return
    meta = {
        "repeats": args.repeats,
        "timm": timm.__version__,
        "minutes": (time.perf_counter() - start) / 60,
        "cpus": os.cpu_count() or 1,
        "load_average": [load, os.getloadavg()[0]],
        "machine": f"{os.cpu_count()} CPU cores, {args.threads} torch thread(s), torch {torch.__version__}",
    }
    atomic_json(args.json, {"meta": meta, "rows": rows})
    page = args.markdown.read_text()
    kept = page.split(TIMM_MARK)[0].rstrip("\n") + "\n\n"
    after = "\n" + CACHE_MARK + page.split(CACHE_MARK, 1)[1] if CACHE_MARK in page else ""
    atomic_bytes(args.markdown, (kept + markdown(rows, meta) + after).encode())
    print(f"wrote {args.json} and {args.markdown} in {meta['minutes']:.1f} min", file=sys.stderr)


if __name__ == "__main__":
    main()
