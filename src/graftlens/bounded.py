"""A store of values bounded by their total size in bytes (least recently used dropped first).

Sweeps keep what their configurations share for a batch (a prefix's KV cache, a donor's
activations) in one of these, so memory stays bounded however many batches a run has.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class BoundedStore(Generic[V]):
    """Values by key, up to ``max_bytes`` of their declared sizes; past that the least recently
    used are dropped, but never the newest one."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._bytes = 0

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> V:
        """The value of ``key`` (a ``KeyError`` if absent), now the most recently used."""
        self._items.move_to_end(key)
        return self._items[key][0]

    def put(self, key: Hashable, value: V, nbytes: int) -> None:
        if key in self._items:
            self._bytes -= self._items.pop(key)[1]
        self._items[key] = (value, nbytes)
        self._bytes += nbytes
        while self._bytes > self.max_bytes and len(self._items) > 1:
            _, (_, dropped) = self._items.popitem(last=False)
            self._bytes -= dropped
