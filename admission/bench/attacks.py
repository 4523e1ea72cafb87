"""admission.bench.attacks: the bench's load again with one hostile client beside it, against
the adaptive window and the recommended static window (`admission bench --attacks`).

Two attacks that any service can be sent, whatever its routes:

- `cheap`: 100 requests to random paths at once every 3 s (answered 404 in well under a
  millisecond): with one latency baseline for every request they would drag it down until the
  honest requests looked queued.
- `uploads`: 10 uploads a second to the bench's path, each 1,000 bytes trickled in 10 chunks
  100 ms apart: a slow client's pace, which must not read as the service's latency.

Each runs in a thread of its own, on its own event loop and connections, while the honest load
is measured; what the honest load got done is set beside the same load without the attack.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace

from admission.bench.loadgen import ResponseError, read_response
from admission.bench.process import LOOPBACK
from admission.bench.recommend import Row
from admission.bench.sweep import LoadPlan, measure, server_env, started, to_row

#: Every attack, by name, with the sentence the report says of it.
ATTACKS = {
    "cheap": "100 random-path requests at once every 3 s",
    "uploads": "10 uploads a second, each trickled over 1 s",
}
BURST = 100
BURST_EVERY_S = 3.0
UPLOADS_EVERY_S = 0.1
UPLOAD_CHUNKS, UPLOAD_CHUNK, UPLOAD_GAP_S = 10, 100, 0.1
REFUSED = (429, 503)


@dataclass(frozen=True)
class Attacked:
    """Attacked is one run under an attack: the window (None: auto), the attack's name, what
    the honest load got done (`row`) and without the attack (`alone`), and how many of the
    attacker's requests were sent and refused by admission (429, 503)."""

    window: int | None
    attack: str
    row: Row
    alone: Row
    sent: int
    refused: int

    @property
    def share(self) -> float:
        """share is the honest throughput under the attack over the same without it."""
        alone = self.alone.throughput_rps
        return self.row.throughput_rps / alone if alone > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        """as_dict is the run as the JSON object `--json` writes under "attacks"."""
        return {
            "window": "auto" if self.window is None else self.window,
            "attack": self.attack,
            "description": ATTACKS[self.attack],
            "throughput_rps": self.row.throughput_rps,
            "without_attack_rps": self.alone.throughput_rps,
            "share": self.share,
            "p99_ms": self.row.p99_ms,
            "attacker_sent": self.sent,
            "attacker_refused": self.refused,
        }


class _Tally:
    """_Tally counts the attacker's requests: sent, and refused by admission (429, 503)."""

    def __init__(self) -> None:
        self.sent = 0
        self.refused = 0


async def send_once(port: int, head: bytes, trickle: bool = False) -> int:
    """send_once sends one request on a connection of its own and returns the answer's status
    (0 when the connection failed); with `trickle`, the body follows in UPLOAD_CHUNKS chunks
    UPLOAD_GAP_S apart, a slow client's pace, until the answer comes."""
    try:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
    except OSError:
        return 0
    answer = asyncio.ensure_future(read_response(reader))
    try:
        writer.write(head)
        if trickle:
            for _ in range(UPLOAD_CHUNKS):
                await asyncio.wait([answer], timeout=UPLOAD_GAP_S)
                if answer.done():
                    break  # answered (refused) before the body: nothing more to send
                writer.write(b"x" * UPLOAD_CHUNK)
        status, _, _ = await answer
        return status
    except (OSError, asyncio.IncompleteReadError, ResponseError):
        return 0
    finally:
        answer.cancel()
        writer.close()


async def _counted(port: int, head: bytes, tally: _Tally, trickle: bool = False) -> None:
    tally.sent += 1
    tally.refused += await send_once(port, head, trickle) in REFUSED


def get_head(path: str, headers: str = "") -> bytes:
    """get_head is the head of a GET of `path`, with `headers` ("Name: value\r\n" lines)."""
    return f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}\r\n{headers}Connection: close\r\n\r\n".encode()


def upload_head(path: str, headers: str = "") -> bytes:
    """upload_head is the head of a POST of UPLOAD_CHUNKS x UPLOAD_CHUNK bytes to `path`."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: {LOOPBACK}\r\n{headers}Connection: close\r\n"
        f"Content-Length: {UPLOAD_CHUNKS * UPLOAD_CHUNK}\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()


async def every(gap_s: float, stop: asyncio.Event, start: Callable[[], Awaitable[None]]) -> None:
    """every starts `start()` every `gap_s` seconds, without waiting for it, until `stop`;
    then gives what it started 5 s to finish."""
    tasks: set[asyncio.Task[None]] = set()
    while not stop.is_set():
        task = asyncio.ensure_future(start())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), gap_s)
    if tasks:
        await asyncio.wait(tasks, timeout=5.0)


def random_path() -> str:
    """random_path is a path no application serves, new each time."""
    return f"/no-such-path-{random.getrandbits(64):016x}"


def attack_coroutine(
    attack: str, port: int, path: str, tally: _Tally, stop: asyncio.Event
) -> Awaitable[None]:
    """attack_coroutine is the attack `attack` against the server on `port` until `stop`."""
    if attack == "cheap":

        async def burst() -> None:
            heads = [get_head(random_path()) for _ in range(BURST)]
            await asyncio.gather(*(_counted(port, head, tally) for head in heads))

        return every(BURST_EVERY_S, stop, burst)
    if attack == "uploads":
        head = upload_head(path.split("?", 1)[0])
        return every(UPLOADS_EVERY_S, stop, lambda: _counted(port, head, tally, trickle=True))
    raise ValueError(f"unknown attack {attack!r}")


@contextlib.contextmanager
def attacking(attack: str, port: int, path: str) -> Iterator[_Tally]:
    """attacking runs `attack` against `port` in a thread of its own for as long as the
    block runs, and yields its tally."""
    tally = _Tally()
    ready = threading.Event()
    box: dict[str, object] = {}

    def run() -> None:
        async def main() -> None:
            stop = asyncio.Event()
            box["stop"] = stop
            box["loop"] = asyncio.get_running_loop()
            ready.set()
            await attack_coroutine(attack, port, path, tally, stop)

        asyncio.run(main())

    thread = threading.Thread(target=run, name=f"admission-bench-{attack}", daemon=True)
    thread.start()
    ready.wait(5.0)
    try:
        yield tally
    finally:
        loop = box.get("loop")
        stop = box.get("stop")
        if isinstance(loop, asyncio.AbstractEventLoop) and isinstance(stop, asyncio.Event):
            loop.call_soon_threadsafe(stop.set)
        thread.join(10.0)


def measure_attacked(
    target: str, window: int | None, attack: str, plan: LoadPlan, alone: Row, warmup_s: float
) -> Attacked:
    """measure_attacked serves `target` with `window` (None: auto) on a fresh process, warms it
    up for `warmup_s`, then measures `plan`'s load while `attack` runs beside it."""
    env = server_env(1)
    env["ADMISSION_WINDOW"] = "auto" if window is None else str(window)
    with started(target, env) as port, attacking(attack, port, plan.path) as tally:
        result = measure(LOOPBACK, port, _with_warmup(plan, warmup_s))
    return Attacked(window, attack, to_row(window, result), alone, tally.sent, tally.refused)


def _with_warmup(plan: LoadPlan, warmup_s: float) -> LoadPlan:
    return replace(plan, warmup_s=max(plan.warmup_s, warmup_s))


def format_attacks(runs: list[Attacked]) -> str:
    """format_attacks is the lines the bench prints of its runs under attack."""
    lines = ["under attack (one hostile client beside the same load):"]
    for run in runs:
        window = "auto" if run.window is None else f"static {run.window}"
        lines.append(
            f"  {window:>10}, {ATTACKS[run.attack]}: {run.row.throughput_rps:,.0f} req/s, "
            f"{run.share:.0%} of its {run.alone.throughput_rps:,.0f} req/s without "
            f"(the attacker: {run.sent} sent, {run.refused} refused)"
        )
    return "\n".join(lines)
