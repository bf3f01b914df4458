"""CIFAR-10/100 from the standard "python version" archives, packed (.tar.gz) or unpacked
(docs/METHOD.md, "The experiment").

The files are pickled dicts. Unpickling runs code, so only the expected member names are ever
unpickled, and with an unpickler that resolves nothing but what numpy arrays need.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["LAYOUTS", "load_cifar"]


@dataclass(frozen=True)
class _Layout:
    title: str
    folder: str  # the folder inside the archive
    archive: str
    train: tuple[str, ...]
    test: str
    meta: str
    label_key: bytes
    meta_key: bytes
    num_classes: int


LAYOUTS = {
    "cifar10": _Layout(
        "CIFAR-10",
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        "batches.meta",
        b"labels",
        b"label_names",
        10,
    ),
    "cifar100": _Layout(
        "CIFAR-100",
        "cifar-100-python",
        "cifar-100-python.tar.gz",
        ("train",),
        "test",
        "meta",
        b"fine_labels",
        b"fine_label_names",
        100,
    ),
}
_READ_ERRORS = (tarfile.TarError, pickle.UnpicklingError, EOFError, zlib.error, OSError, AttributeError, IndexError)


class _ArrayUnpickler(pickle.Unpickler):
    """Resolves only numpy's array/dtype reconstruction: a tampered file cannot call anything else."""

    def find_class(self, module: str, name: str) -> Any:
        import numpy as np

        if name == "ndarray" and module == "numpy":
            return np.ndarray
        if name == "dtype" and module == "numpy":
            return np.dtype
        if (module, name) == ("_codecs", "encode"):  # how protocol 2 stores bytes when written by Python 3
            import codecs

            return codecs.encode
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
            core = getattr(np, "_core", None) or np.core
            return getattr(core.multiarray, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a CIFAR file")


def _unpickle(raw: bytes) -> Any:
    return _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()


def _find(name: str, data_dir: Path) -> tuple[Path, bool]:
    """Where the dataset is: (path, is_archive). Accepts the archive, its folder, or what holds either."""
    lay = LAYOUTS[name]
    if data_dir.is_file():
        if data_dir.name.endswith((".tar.gz", ".tgz")):
            return data_dir, True
        raise ValueError(f"data_dir {data_dir} is a file, not a folder or a .tar.gz archive")
    if not data_dir.is_dir():
        raise ValueError(f"data_dir {data_dir} does not exist")
    if not any(data_dir.iterdir()):
        raise ValueError(f"data_dir {data_dir} is empty: put {lay.archive} (or its unpacked {lay.folder}/) there")
    for folder in (data_dir, data_dir / lay.folder):
        if (folder / lay.test).is_file():
            return folder, False
    if (data_dir / lay.archive).is_file():
        return data_dir / lay.archive, True
    for other_name, other in LAYOUTS.items():
        if other_name == name:
            continue
        hits = [data_dir / other.archive, data_dir / other.folder, data_dir / other.test]
        if any(p.exists() for p in hits):
            raise ValueError(
                f"data_dir {data_dir} holds {other.title}, not {lay.title}: use --dataset {other_name} "
                f"or point --data-dir at {lay.archive}"
            )
    raise ValueError(f"no {lay.title} in {data_dir}: expected {lay.archive} or its unpacked {lay.folder}/")


def _read_members(name: str, path: Path, is_archive: bool) -> dict[str, Any]:
    lay = LAYOUTS[name]
    wanted = (*lay.train, lay.test, lay.meta)
    found: dict[str, Any] = {}
    others = tuple(f"{o.folder}/" for o in LAYOUTS.values() if o is not lay)
    seen_other = False
    try:
        if is_archive:
            # Stream mode reads the gzip once, front to back, without extracting anything to disk.
            with tarfile.open(path, "r|gz") as tar:
                for member in tar:
                    seen_other = seen_other or member.name.startswith(others)
                    base = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and base in wanted and member.name in (base, f"{lay.folder}/{base}"):
                        handle = tar.extractfile(member)
                        found[base] = _unpickle(handle.read())
        else:
            for base in wanted:
                if (path / base).is_file():
                    found[base] = _unpickle((path / base).read_bytes())
    except _READ_ERRORS as exc:
        raise ValueError(f"{path}: corrupt or truncated {lay.title} data ({type(exc).__name__}: {exc})") from None
    missing = [w for w in wanted if w not in found]
    if missing:
        if seen_other:
            raise ValueError(f"{path} holds the other CIFAR, not {lay.title}: check --dataset")
        raise ValueError(f"{path} lacks {lay.title} file(s) {', '.join(missing)}: not a complete {lay.archive}")
    return found


def _to_tensors(name: str, part: str, d: Any, where: Path) -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np

    lay = LAYOUTS[name]
    if not isinstance(d, dict) or b"data" not in d:
        raise ValueError(f"{where}: {part} is not a CIFAR batch (a dict with b'data')")
    if lay.label_key not in d:
        other = next(o for o in LAYOUTS.values() if o is not lay)
        hint = f" (it looks like {other.title})" if other.label_key in d else ""
        raise ValueError(f"{where}: {part} has no {lay.label_key.decode()!r} labels{hint}: not {lay.title}")
    data, labels = d[b"data"], np.asarray(d[lay.label_key])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}"
        raise ValueError(f"{where}: {part} data must be an N x 3072 uint8 array, got {got}")
    if labels.ndim != 1 or len(labels) != len(data) or len(data) == 0:
        raise ValueError(f"{where}: {part} has {len(data)} images but {labels.size} labels")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= lay.num_classes:
        raise ValueError(f"{where}: {part} labels must be integers in [0, {lay.num_classes}), got {labels.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(data)).view(-1, 3, 32, 32)  # channel planes of 32 x 32
    return x, torch.from_numpy(labels.astype(np.int64))


def load_cifar(name: str, data_dir: str | Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train_x, train_y, test_x, test_y)``: uint8 images N x 3 x 32 x 32 and int64 labels.

    Raises ``ValueError`` naming the path for a missing or empty folder, a corrupt or truncated archive,
    the other CIFAR's files, or data of the wrong shape, type or label range.
    """
    if name not in LAYOUTS:
        raise ValueError(f"dataset must be one of {', '.join(LAYOUTS)}, got {name!r}")
    if data_dir is None or str(data_dir) == "":
        raise ValueError(f"data_dir is required for {LAYOUTS[name].title}")
    lay = LAYOUTS[name]
    path, is_archive = _find(name, Path(data_dir).expanduser())
    found = _read_members(name, path, is_archive)
    meta = found[lay.meta]
    if not isinstance(meta, dict) or lay.meta_key not in meta:
        raise ValueError(f"{path}: {lay.meta} has no {lay.meta_key.decode()!r}: not {lay.title}")
    parts = [_to_tensors(name, b, found[b], path) for b in lay.train]
    train_x = torch.cat([p[0] for p in parts])
    train_y = torch.cat([p[1] for p in parts])
    test_x, test_y = _to_tensors(name, lay.test, found[lay.test], path)
    return train_x, train_y, test_x, test_y
