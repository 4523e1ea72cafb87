"""benchmarks/ws_message_instructions.py: what websocket message limits cost per message, in
instructions.

One websocket through the middleware, driven in process with a fake receive/send (no network),
echoing every message; each variant runs under valgrind's callgrind twice, N1 then N2 messages
on one socket, and the difference of the two totals over N2 - N1 is one message's cost.

Variants: none (ADMISSION_RATE, no message limit), conn (ADMISSION_WS_MESSAGE_RATE, per
connection), policy (a route policy of one message limit, memory store), policy2 (the same
with two message limits).

Needs valgrind. Run: python benchmarks/ws_message_instructions.py [--messages 200,4200]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from callgrind import parse, per_unit

VARIANTS = ("none", "conn", "policy", "policy2")
RATE = "1000000/second"


def build(name: str) -> Any:
    """build is the middleware of variant `name` around an echo app."""
    from admission import AdmissionMiddleware, Policy, Settings

    def chat(*limits: str) -> Settings:
        return Settings(policies=[Policy(name="chat", match="/ws", message_limits=limits)])

    settings = {
        "none": Settings(rate=RATE),
        "conn": Settings(rate=RATE, ws_message_rate=RATE),
        "policy": chat(RATE),
        "policy2": chat(RATE, "1000000000/hour"),
    }[name]

    async def echo(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": message["text"]})

    return AdmissionMiddleware(echo, settings=settings, handle_signals=False)


def run(name: str, messages: int) -> None:
    """run sends `messages` messages on one websocket of variant `name` (the child's work)."""
    app = build(name)
    incoming: list[dict[str, Any]] = [{"type": "websocket.connect"}]
    incoming += [{"type": "websocket.receive", "text": "x"}] * messages
    incoming.append({"type": "websocket.disconnect", "code": 1000})
    feed = iter(incoming)
    echoed = 0

    async def receive() -> dict[str, Any]:
        return next(feed)

    async def send(message: dict[str, Any]) -> None:
        nonlocal echoed
        echoed += message["type"] == "websocket.send"

    scope = {
        "type": "websocket",
        "path": "/ws",
        "raw_path": b"/ws",
        "root_path": "",
        "headers": [],
        "query_string": b"",
        "client": ("192.0.2.1", 40000),
        "server": ("testserver", 80),
        "scheme": "ws",
        "subprotocols": [],
    }
    asyncio.run(app(scope, receive, send))
    if echoed != messages:
        raise SystemExit(f"{name}: {echoed} of {messages} messages echoed")


def main(argv: list[str] | None = None) -> int:
    """main counts each variant's instructions per message and prints what limits add."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", default="200,4200", help="N1,N2 (default 200,4200)")
    parsed = parse(parser, argv, run, "messages")
    if parsed is None:
        return 0
    _, low, high = parsed
    per = {name: per_unit(__file__, name, low, high) for name in VARIANTS}
    print(f"{'variant':<10}{'instr/message':>15}{'added':>10}")
    for name in VARIANTS:
        print(f"{name:<10}{per[name]:>15,.0f}{per[name] - per['none']:>+10,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
