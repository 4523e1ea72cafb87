"""benchmarks/fair_shares.py: one heavy client beside light ones on a window of 32, in process.

16 light clients (one connection each: a 100 ms request, then 0.1 s of thought) run beside one
client on 48 connections (a request as soon as the last is answered, 1 ms after a refusal),
which starts 50 ms earlier and so holds the whole window when they arrive. The requests are
told apart by an `X-Client` header. For each setting the run prints the share of the light
clients' requests served, their p99 against their p99 alone, and what the heavy client got.

Rows: `fair` is `ADMISSION_KEY=header:X-Client` (fair shares); `first come` is
`ADMISSION_KEY=global`, every request one client's, which is how the window shared its slots
before fair shares (first come, first served). Each with and without a queue
(`ADMISSION_QUEUE_TIMEOUT`).

Run: python benchmarks/fair_shares.py [--seconds S]   (about 8 x S seconds in all)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

from admission import AdmissionMiddleware, Settings

Message = dict[str, Any]
LIGHT = 16
HEAVY = 48


async def slow_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await asyncio.sleep(0.1)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def scope_of(name: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"x"), (b"x-client", name.encode())],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }


async def load(settings: Settings, heavy: int, seconds: float) -> dict[str, float]:
    """load runs the light clients beside `heavy` heavy connections for `seconds`."""
    mw = AdmissionMiddleware(slow_app, settings=settings, handle_signals=False)
    mw._start()
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    light: list[tuple[bool, float]] = []
    heavy_served = 0

    async def one(name: str) -> int:
        status = 0

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await mw(scope_of(name), receive, send)
        return status

    async def heavy_connection() -> None:
        nonlocal heavy_served
        while loop.time() < end:
            if await one("heavy") == 200:
                heavy_served += 1
            else:
                await asyncio.sleep(0.001)

    async def light_client(n: int) -> None:
        await asyncio.sleep(n * 0.1 / LIGHT)
        while loop.time() < end:
            began = loop.time()
            status = await one(f"light{n}")
            light.append((status == 200, loop.time() - began))
            await asyncio.sleep(0.1)

    tasks = [asyncio.create_task(heavy_connection()) for _ in range(heavy)]
    await asyncio.sleep(0.05)
    tasks += [asyncio.create_task(light_client(n)) for n in range(LIGHT)]
    await asyncio.gather(*tasks)
    served = sorted(latency for ok, latency in light if ok)
    return {
        "served": len(served) / len(light),
        "p99_ms": 1000 * served[int(0.99 * (len(served) - 1))] if served else float("inf"),
        "heavy_rps": heavy_served / seconds,
        "fair_share": mw.stats.rejected["fair_share"],
    }


async def main(seconds: float) -> None:
    logging.getLogger("admission").setLevel(logging.WARNING)
    print(f"window 32, {LIGHT} light clients beside one on {HEAVY} connections, {seconds:g} s")
    print(
        f"{'sharing':12} {'queue':>6} {'light served':>13} {'p99 ms':>7} {'alone p99':>10} "
        f"{'heavy rps':>10} {'fair_share':>11}"
    )
    for name, key in (("first come", "global"), ("fair", "header:X-Client")):
        for queue in (0.0, 0.1):
            settings = Settings(window=32, key=key, queue_timeout=queue)
            alone = await load(settings, 0, 1.0)
            mixed = await load(settings, HEAVY, seconds)
            print(
                f"{name:12} {queue:6g} {mixed['served']:13.1%} {mixed['p99_ms']:7.0f} "
                f"{alone['p99_ms']:10.0f} {mixed['heavy_rps']:10.0f} {mixed['fair_share']:11.0f}"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    asyncio.run(main(parser.parse_args().seconds))
