"""What identifies an example's input to the model: two 64-bit words per example (``fingerprints``) and a key for
the structure of the whole input (``structure_key``).

A stored row is served only when the example's fingerprint now is the one it was stored under, so the hash must
change when any element of the example changes, including by the transforms augmentation applies (a sign flip,
a permutation, a shift). Each element's bits, salted with a random word for its position in the row, go through
a nonlinear 64-bit mixer (splitmix64's finaliser) before they are summed: no linear relation between the bits of
two inputs (a flipped sign bit, swapped positions) carries over to their hashes.
"""

from __future__ import annotations

from typing import Any

import torch

from ..tensors import tensors

__all__ = ["fingerprints", "structure_key"]

_INT_OF = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_MASK64 = (1 << 64) - 1


def _signed(word: int) -> int:
    """A 64-bit word as torch's int64 holds it (two's complement)."""
    word &= _MASK64
    return word - (1 << 64) if word >= 1 << 63 else word


_MUL1, _MUL2 = _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)  # splitmix64's multipliers


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 words (torch's ``>>`` on int64 is arithmetic: it copies the sign bit)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    x = x ^ _shift_right(x, 30)
    x = x * _MUL1
    x = x ^ _shift_right(x, 27)
    x = x * _MUL2
    return x ^ _shift_right(x, 31)


def _words(t: torch.Tensor, batch: int) -> torch.Tensor:
    """The bits of each element of ``t`` (``batch`` rows) as int64 words, one row per example."""
    if t.is_complex():
        t = torch.view_as_real(t)
    if t.dtype == torch.bool:
        x = t.to(torch.int64)
    elif t.is_floating_point():
        x = t.contiguous().view(_INT_OF[t.element_size()]).to(torch.int64)
    else:
        x = t.to(torch.int64)
    return x.reshape(batch, -1)


_SALTS: dict[tuple[int, str], torch.Tensor] = {}


def _salts(n: int, device: torch.device) -> torch.Tensor:
    """Two random words per position of a row of ``n`` elements (the same in every process: a fixed seed)."""
    key = (n, str(device))
    salt = _SALTS.get(key)
    if salt is None:
        g = torch.Generator().manual_seed(0x5EED + n)
        salt = torch.randint(-(2**62), 2**62, (2, n), generator=g, dtype=torch.int64).to(device)
        if len(_SALTS) > 64:
            _SALTS.clear()
        _SALTS[key] = salt
    return salt


def _row_hashes(x: torch.Tensor) -> torch.Tensor:
    """``[batch, 2]`` words for ``[batch, n]`` int64 words: the mixed, position-salted elements summed, plain and
    times odd random weights."""
    salt = _salts(x.shape[1], x.device)
    mixed = _mix(x + salt[0])
    return torch.stack([mixed.sum(1), (mixed * (salt[1] | 1)).sum(1)], 1)


def _autocast_state(device: torch.device | None) -> tuple[Any, ...]:
    """Autocast changes what the frozen layers compute from the same input: part of the structure."""
    kinds = {"cpu"} | ({device.type} if device is not None else set())
    return tuple((k, torch.is_autocast_enabled(k), torch.get_autocast_dtype(k)) for k in sorted(kinds))


def structure_key(value: Any, batch: int) -> int:
    """A hash of ``value``'s structure: keys, types, non-tensor leaves, each tensor's dtype and shape (the batch
    dimension left out), the content of the tensors that are not per example, and the autocast state."""
    parts: list[Any] = []
    device: torch.device | None = None

    def walk(v: Any) -> None:
        nonlocal device
        if isinstance(v, torch.Tensor):
            device = device or v.device
            per_row = v.dim() > 0 and v.shape[0] == batch
            parts.append((str(v.dtype), tuple(v.shape[1:]) if per_row else ("shared", *v.shape), per_row))
            if not per_row:
                parts.append(tuple(_row_hashes(_words(v.reshape(1, -1), 1)).reshape(-1).tolist()))
        elif isinstance(v, (list, tuple)):
            parts.append((type(v).__name__, len(v)))
            for x in v:
                walk(x)
        elif isinstance(v, dict) or hasattr(v, "items"):
            for k, x in v.items():
                parts.append(("key", str(k)))
                walk(x)
        else:
            parts.append((type(v).__name__, repr(v)))

    walk(value)
    parts.append(_autocast_state(device))
    return hash(tuple(parts))


def fingerprints(value: Any, batch: int) -> tuple[torch.Tensor, int]:
    """``[batch, 2]`` int64 words per example, from the rows of every per-example tensor (hashed as one row of
    words: the number of ops does not grow with the number of tensors) and ``structure_key``; and that key."""
    key = structure_key(value, batch)
    rows = [_words(t, batch) for t in tensors(value) if t.dim() > 0 and t.shape[0] == batch]
    out = torch.full((batch, 2), _signed(key), dtype=torch.int64)
    if rows:
        words = torch.cat([r.to(rows[0].device) for r in rows], 1)
        out = _mix(out * _MUL1 + _row_hashes(words).cpu())
    return out, key
