"""Data loading (CIFAR python-version files, embedded digits), augmentation and batching."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from freezeout.experiment.data import Batches, channel_stats, crop_flip, load_cifar, load_dataset, load_digits
from tests.helpers.cifar_files import ARCHIVE, FOLDER, cifar_members, write_cifar


def expected_arrays(name, per_batch=20, seed=0):
    files = cifar_members(name, per_batch, seed)
    key = b"labels" if name == "cifar10" else b"fine_labels"
    train = [files[f] for f in files if f.startswith("data_batch") or f == "train"]
    test = files["test_batch" if name == "cifar10" else "test"]
    x = np.concatenate([d[b"data"] for d in train]).reshape(-1, 3, 32, 32)
    y = np.concatenate([d[key] for d in train])
    return x, y, test[b"data"].reshape(-1, 3, 32, 32), np.asarray(test[key])


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("packed", [True, False])
def test_loads_exactly_what_was_written(tmp_path, name, packed):
    write_cifar(tmp_path, name, packed)
    want = expected_arrays(name)
    got = load_cifar(name, tmp_path)
    for g, w in zip(got, want):
        assert torch.equal(g, torch.from_numpy(np.ascontiguousarray(w)).to(g.dtype))
    assert got[0].dtype == torch.uint8 and got[0].shape == (100, 3, 32, 32)
    assert got[1].dtype == torch.int64 and got[3].shape == (20,)
    # the unpacked folder itself, or the archive file itself, is accepted too
    inner = tmp_path / (ARCHIVE[name] if packed else FOLDER[name])
    assert torch.equal(load_cifar(name, inner)[0], got[0])


def test_channel_planes_layout(tmp_path):
    files = cifar_members("cifar10")
    files["test_batch"][b"data"][0] = np.repeat([10, 20, 30], 1024).astype(np.uint8)  # R, G, B planes
    write_cifar(tmp_path, "cifar10", packed=True, files=files)
    test_x = load_cifar("cifar10", tmp_path)[2]
    assert test_x[0, :, 5, 7].tolist() == [10, 20, 30]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update({b"data": d[b"data"][:, :3000]}), "N x 3072 uint8"),
        (lambda d: d.update({b"data": d[b"data"].astype(np.int64)}), "N x 3072 uint8"),
        (lambda d: d.update({b"labels": [*d[b"labels"][:-1], 10]}), r"labels must be integers in \[0, 10\)"),
        (lambda d: d.update({b"labels": d[b"labels"][:-1]}), "labels"),
        (lambda d: d.pop(b"labels"), "no 'labels'"),
    ],
)
def test_bad_contents_are_named(tmp_path, change, message):
    files = cifar_members("cifar10")
    change(files["data_batch_3"])
    write_cifar(tmp_path, "cifar10", packed=True, files=files)
    with pytest.raises(ValueError, match=message):
        load_cifar("cifar10", tmp_path)


@pytest.mark.parametrize("member", ["train", "test"])
@pytest.mark.parametrize("bad", [100, -1])
def test_cifar100_fine_labels_out_of_range_are_refused(tmp_path, member, bad):
    # 100 is the classic off-by-one (num_classes itself); it would index past the classifier's 100 outputs
    files = cifar_members("cifar100")
    labels = files[member][b"fine_labels"]
    files[member][b"fine_labels"] = [*labels[:-1], bad]
    write_cifar(tmp_path, "cifar100", packed=False, files=files)
    with pytest.raises(ValueError, match=rf"{member} labels must be integers in \[0, 100\)"):
        load_cifar("cifar100", tmp_path)
    files[member][b"fine_labels"] = [*labels[:-1], 99]  # the top class itself is fine
    write_cifar(tmp_path, "cifar100", packed=False, files=files)
    assert int(load_cifar("cifar100", tmp_path)[1 if member == "train" else 3].max()) == 99


def test_missing_empty_and_wrong_pairing(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_cifar("cifar10", tmp_path / "nope")
    with pytest.raises(ValueError, match="is empty"):
        load_cifar("cifar10", tmp_path)
    write_cifar(tmp_path / "c10", "cifar10", packed=True)
    write_cifar(tmp_path / "c100", "cifar100", packed=False)
    with pytest.raises(ValueError, match="holds CIFAR-10, not CIFAR-100"):
        load_cifar("cifar100", tmp_path / "c10")
    with pytest.raises(ValueError, match="holds CIFAR-100, not CIFAR-10"):
        load_cifar("cifar10", tmp_path / "c100")
    with pytest.raises(ValueError, match="not CIFAR-100"):  # the archive itself, named wrongly
        load_cifar("cifar100", tmp_path / "c10" / ARCHIVE["cifar10"])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no CIFAR-10 in"):
        load_cifar("cifar10", tmp_path / "other")


def test_corrupt_or_truncated_archive(tmp_path):
    write_cifar(tmp_path, "cifar10", packed=True)
    archive = tmp_path / ARCHIVE["cifar10"]
    raw = archive.read_bytes()
    archive.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=f"{archive}: corrupt or truncated"):
        load_cifar("cifar10", tmp_path)
    archive.write_bytes(os.urandom(4096))
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_cifar("cifar10", tmp_path)


def test_truncated_pickle_and_foreign_pickle_are_refused(tmp_path):
    write_cifar(tmp_path, "cifar100", packed=False)
    train = tmp_path / FOLDER["cifar100"] / "train"
    train.write_bytes(train.read_bytes()[:500])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_cifar("cifar100", tmp_path)
    # a pickle that would call a function when loaded is never executed
    train.write_bytes(pickle.dumps({b"data": os.getcwd}))
    with pytest.raises(ValueError, match="refusing to load"):
        load_cifar("cifar100", tmp_path)


def test_digits():
    train_x, train_y, test_x, test_y = load_digits()
    assert train_x.shape == (1497, 1, 8, 8) and test_x.shape == (300, 1, 8, 8)
    assert train_x.dtype == torch.uint8 and int(train_x.max()) == 16 and int(train_x.min()) == 0
    assert set(train_y.tolist()) == set(range(10)) and set(test_y.tolist()) == set(range(10))
    again = load_digits()
    assert all(torch.equal(a, b) for a, b in zip(again, (train_x, train_y, test_x, test_y)))  # fixed split


def test_validation_split():
    full = load_dataset("digits")
    data = load_dataset("digits", val_split=200)
    assert len(data.val_y) == 200 and len(data.train_y) == 1297
    both = torch.cat([data.train_x, data.val_x]).flatten(1)
    assert sorted(map(tuple, both.tolist())) == sorted(map(tuple, full.train_x.flatten(1).tolist()))
    assert torch.equal(data.test_x, full.test_x)
    with pytest.raises(ValueError, match="val_split"):
        load_dataset("digits", val_split=1497)


def reference_crop_flip(x, pad, offsets, flips):
    padded = F.pad(x, (pad,) * 4)
    out = []
    for b in range(len(x)):
        r, c = offsets[b].tolist()
        window = padded[b, :, r : r + x.shape[2], c : c + x.shape[3]]
        out.append(window.flip(-1) if flips[b] else window)
    return torch.stack(out)


@pytest.mark.parametrize("pad", [0, 1, 4])
def test_crop_flip_matches_per_sample_reference(pad):
    g = torch.Generator().manual_seed(pad)
    x = torch.randint(1, 256, (16, 3, 10, 12), generator=g, dtype=torch.uint8)
    offsets = torch.randint(0, 2 * pad + 1, (16, 2), generator=g)
    flips = torch.randint(0, 2, (16,), generator=g).bool()
    out = crop_flip(x, pad, offsets, flips)
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert torch.equal(out, reference_crop_flip(x, pad, offsets, flips))
    centre = torch.full((16, 2), pad)
    assert torch.equal(crop_flip(x, pad, centre, torch.ones(16, dtype=torch.bool)), x.flip(-1))  # exact mirror
    assert torch.equal(crop_flip(x, pad, centre), x)


def test_batches_cover_the_data_and_normalise():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (53, 3, 8, 8), generator=g, dtype=torch.uint8) // torch.tensor([1, 2, 4]).view(1, 3, 1, 1)
    y = torch.arange(53)
    mean, std = channel_stats(x, chunk=7)
    assert torch.allclose(mean, x.double().mean((0, 2, 3)).float())
    assert torch.allclose(std, x.double().permute(1, 0, 2, 3).flatten(1).std(1, unbiased=False).float())
    plain = Batches(x, y, 10, mean, std)
    xs = torch.cat([b[0] for b in plain])
    assert len(plain) == 6 and [len(b[1]) for b in plain] == [10] * 5 + [3]  # the partial batch is kept
    assert torch.allclose(xs.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(xs.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-5)
    aug = Batches(x, y, 10, mean, std, train=True, pad=2, flip=True, generator=torch.Generator().manual_seed(1))
    first, second = [torch.cat([b[1] for b in aug]) for _ in range(2)]
    assert sorted(first.tolist()) == list(range(53)) and not torch.equal(first, second)  # reshuffled each pass
    for xb, yb in aug:  # each image is a window of its own padded, possibly mirrored, original
        raw = torch.round(xb * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1))
        for img, label in zip(raw, yb.tolist()):
            windows = F.pad(x[label].float(), (2,) * 4).unfold(1, 8, 1).unfold(2, 8, 1).permute(1, 2, 0, 3, 4)
            candidates = torch.cat([windows, windows.flip(-1)]).flatten(0, 1)  # 2 x 5 x 5 windows
            assert bool((candidates == img).flatten(1).all(1).any())
