"""Bad CIFAR data fails before training starts, with one line naming the problem and no file written; a data
file truncated anywhere is a ``ValueError``, never another exception."""

from __future__ import annotations

import pickletools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freezeout.cli import main
from freezeout.experiment.data import load_cifar
from tests.helpers.cifar_files import FOLDER, cifar_members, write_cifar


@pytest.mark.parametrize(
    "member, change, word",
    [
        (
            "data_batch_2",
            lambda d: d.update({b"labels": [-1, *d[b"labels"][1:]]}),
            "labels must be integers in [0, 10)",
        ),
        ("test_batch", lambda d: d.update({b"labels": [*d[b"labels"][:-1], 10]}), "labels must be integers in [0, 10)"),
        ("data_batch_5", lambda d: d.update({b"labels": [0.5] * len(d[b"labels"])}), "labels must be integers"),
        ("data_batch_1", lambda d: d.update({b"data": d[b"data"].reshape(-1, 3, 32, 32)}), "N x 3072 uint8"),
        ("test_batch", lambda d: d.update({b"data": d[b"data"][:, :1024]}), "N x 3072 uint8"),
        ("data_batch_4", lambda d: d.update({b"data": d[b"data"].astype(np.float32)}), "N x 3072 uint8"),
        ("data_batch_3", lambda d: d.update({b"labels": d[b"labels"][:5]}), "images but 5 labels"),
    ],
)
def test_bad_data_fails_before_any_file_is_written(tmp_path, capsys, member, change, word):
    files = cifar_members("cifar10")
    change(files[member])
    write_cifar(tmp_path / "data", "cifar10", packed=True, files=files)
    out = tmp_path / "run"
    argv = ["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"), "--depth", "10", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and word in err[0] and member in err[0], err
    assert not out.exists()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = write_cifar(tmp_path_factory.mktemp("c100"), "cifar100", packed=False, per_batch=4)
    return {p.name: p.read_bytes() for p in (root / FOLDER["cifar100"]).iterdir()}


def opcode_ends(raw: bytes) -> list[int]:
    """Cuts right after a whole opcode (each one's end is where the next starts), up to just before STOP."""
    return [pos for _, _, pos in list(pickletools.genops(raw))[1:]]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_file_truncated_anywhere_is_refused_with_value_error(tmp_path, pristine, data):
    name = data.draw(st.sampled_from(sorted(pristine)))
    raw = pristine[name]
    # Truncated at any byte, or right after a whole opcode, where the unpickler has nothing half-read to trip
    # over. Every cut must fail: a pickle ends at its STOP opcode, its last byte, so no strict prefix is a
    # complete pickle. (Random byte flips are not fuzzed here: some make CPython report "SystemError:
    # deallocated bytearray object has exported buffers" as unraisable inside the unpickler; open issue.)
    cut = data.draw(st.integers(0, len(raw) - 1) | st.sampled_from(opcode_ends(raw)))
    folder = tmp_path / FOLDER["cifar100"]
    folder.mkdir(exist_ok=True)
    for n, b in pristine.items():
        (folder / n).write_bytes(raw[:cut] if n == name else b)
    with pytest.raises(ValueError, match="corrupt or truncated CIFAR-100 data") as info:
        load_cifar("cifar100", tmp_path)
    message = str(info.value).strip()
    assert message and "\n" not in message
