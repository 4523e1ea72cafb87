"""admission.stores.base: what a store can do, as typed capabilities.

Every store is a `Store`. One that decides all of a request's charges at once is also a
`ChargesStore` (route policies need one), and one that takes charges after a response a
`ChargeAfterStore` (a policy's `charge_when` needs one); the memory store is a `SyncStore`
too, deciding without a coroutine. One that can serve again after `close()` is a
`ReopenableStore`. Callers find out which once, when they are built, never per request."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar, runtime_checkable

from admission.bucket import Decision
from admission.charges import Charge, Verdict

T = TypeVar("T")


class Store(Protocol):
    """Store decides token-bucket requests per key and owns whatever it connects to.

    `decide(key, cost)` takes `cost` tokens from `key`'s bucket if it can, atomically with
    respect to every other caller sharing the store. `check()` raises `StorageError` when the
    store can't answer. `close()` releases connections; it is safe to call more than once.
    """

    async def decide(self, key: str, cost: int = 1) -> Decision: ...

    async def check(self) -> None: ...

    async def close(self) -> None: ...


@runtime_checkable
class ChargesStore(Store, Protocol):
    """ChargesStore is a store that decides a request's charges, each in its own bucket, all
    or nothing, in one call (`admission.charges`)."""

    async def decide_charges(self, charges: Sequence[Charge]) -> Verdict: ...


@runtime_checkable
class ChargeAfterStore(ChargesStore, Protocol):
    """ChargeAfterStore is a store that can also take charges after a response, in full
    (`charge`; a policy's `charge_when`): every store of admission's own."""

    async def charge(self, charges: Sequence[Charge]) -> None: ...


class SyncStore(ChargesStore, Protocol):
    """SyncStore is a store that decides at a given `now` without awaiting, on its own
    `clock`: the memory store."""

    clock: Callable[[], float]

    def decide_at(self, key: str, now: float, cost: int = 1) -> Decision: ...

    def decide_charges_at(self, charges: Sequence[Charge], now: float) -> Verdict: ...


@runtime_checkable
class ReopenableStore(Store, Protocol):
    """ReopenableStore is a store that decides again after `close()` once `reopen()` is called:
    the service's next lifespan (a second `TestClient` block) uses it again."""

    def reopen(self) -> None: ...
