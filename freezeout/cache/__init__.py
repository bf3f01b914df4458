"""The frozen-prefix cache: ``PrefixCache`` serves each example's frontier (the output of the last frozen layer)
where inputs repeat, so the frozen layers do not run (docs/CACHE.md).

- ``cache``: ``PrefixCache`` and ``CacheWarning``, the block ``batch(indices)`` and each forward's way through it;
- ``passes``: the three kinds of forward (``Recording``, ``Serving``, ``Checking``) and a frozen call in each;
- ``proof``: what the cache knows per depth (``Proof``, ``Proofs``); ``recorder``: the forward that proves one;
- ``confirm``: the checks on real tensors (rows each example's own, spot checks);
- ``state``: the tensors read before the frontier and their stamps;
- ``fingerprint``: what identifies an example's input;
- ``rows``, ``store``: which example is held at which depth, and the row tables holding them.
"""

from .cache import CacheWarning, PrefixCache

__all__ = ["CacheWarning", "PrefixCache"]
