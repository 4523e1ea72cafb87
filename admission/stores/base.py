"""admission.stores.base: the protocol every store implements."""

from __future__ import annotations

from typing import Protocol

from admission.bucket import Decision


class Store(Protocol):
    """Store decides token-bucket requests per key and owns whatever it connects to.

    `decide(key, cost)` takes `cost` tokens from `key`'s bucket if it can, atomically with
    respect to every other caller sharing the store. `check()` raises `StorageError` when the
    store can't answer. `close()` releases connections; it is safe to call more than once.
    """

    async def decide(self, key: str, cost: int = 1) -> Decision: ...

    async def check(self) -> None: ...

    async def close(self) -> None: ...
