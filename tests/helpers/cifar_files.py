"""Small CIFAR-10/100 files in the real "python version" format (the tests cannot download the real ones).

Like the originals (pickled by Python 2): dicts with bytes keys, ``data`` an N x 3072 uint8 array of
channel planes, labels a list of ints, and the archive holding one folder.
"""

from __future__ import annotations

import contextlib
import pickle
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

FOLDER = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
ARCHIVE = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}
CLASSES = {"cifar10": 10, "cifar100": 100}


def batch_dict(name: str, n: int, rng: np.random.Generator, label: str) -> dict:
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, CLASSES[name], size=n)]
    d = {b"batch_label": label.encode(), b"data": data, b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
    if name == "cifar10":
        d[b"labels"] = labels
    else:
        d[b"fine_labels"] = labels
        d[b"coarse_labels"] = [v // 5 for v in labels]
    return d


def cifar_members(name: str, per_batch: int = 20, seed: int = 0) -> dict[str, dict]:
    """File name -> pickled dict of a small data set: 5 x ``per_batch`` train images for CIFAR-10
    (one ``train`` file of the same size for CIFAR-100) and ``per_batch`` test images."""
    rng = np.random.default_rng(seed)
    if name == "cifar10":
        files = {f"data_batch_{i}": batch_dict(name, per_batch, rng, f"training batch {i} of 5") for i in range(1, 6)}
        files["test_batch"] = batch_dict(name, per_batch, rng, "testing batch 1 of 1")
        files["batches.meta"] = {b"label_names": [f"c{i}".encode() for i in range(10)], b"num_cases_per_batch": 10}
    else:
        files = {
            "train": batch_dict(name, 5 * per_batch, rng, "training"),
            "test": batch_dict(name, per_batch, rng, "t"),
        }
        files["meta"] = {b"fine_label_names": [f"f{i}".encode() for i in range(100)], b"coarse_label_names": []}
    return files


def write_cifar(root: Path, name: str, packed: bool, per_batch: int = 20, seed: int = 0, files=None) -> Path:
    """Write the data set under ``root`` (as ``root/<archive>`` or ``root/<folder>/``); return ``root``."""
    files = cifar_members(name, per_batch, seed) if files is None else files
    folder = root / FOLDER[name]
    folder.mkdir(parents=True, exist_ok=True)
    for fname, d in files.items():
        (folder / fname).write_bytes(pickle.dumps(d, protocol=2))
    if packed:
        with tarfile.open(root / ARCHIVE[name], "w:gz") as tar:
            tar.add(folder, arcname=FOLDER[name])
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    return root


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine OpenMP barriers
    make each op wait for a descheduled thread (measured: 2 s per step instead of 9 ms)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
