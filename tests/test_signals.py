"""Tests of the signal chain's counting: a stop that reaches a worker both directly (a signal
to the whole process group) and through the supervisor's relay counts once."""

from __future__ import annotations

import asyncio
import os
import signal
from types import FrameType

from admission.lifecycle.signals import SignalChain
from tests.asgi import until


def counting_chain() -> tuple[SignalChain, list[int]]:
    """counting_chain is a chain (not installed) that records every signal it acts on."""
    seen: list[int] = []

    def on_signal(sig: int, frame: FrameType | None) -> None:
        seen.append(sig)

    return SignalChain(on_signal), seen


def deliver(chain: SignalChain, sig: int) -> None:
    """deliver is what the chain's handler does once the signal reaches the loop."""
    chain._received_one(sig, None)


def test_a_group_signal_also_relayed_by_the_supervisor_counts_once() -> None:
    chain, seen = counting_chain()
    deliver(chain, signal.SIGINT)
    chain.relayed(1, signal.SIGINT)
    assert seen == [signal.SIGINT]


def test_the_relay_arriving_first_still_counts_once() -> None:
    chain, seen = counting_chain()
    chain.relayed(1, signal.SIGTERM)
    deliver(chain, signal.SIGTERM)
    assert seen == [signal.SIGTERM]


def test_a_second_signal_to_the_group_counts_twice() -> None:
    chain, seen = counting_chain()
    for count in (1, 2):
        deliver(chain, signal.SIGINT)
        chain.relayed(count, signal.SIGINT)
    assert seen == [signal.SIGINT, signal.SIGINT]


def test_two_signals_to_the_supervisor_alone_count_twice() -> None:
    chain, seen = counting_chain()
    chain.relayed(1, signal.SIGTERM)
    chain.relayed(2, signal.SIGTERM)
    assert seen == [signal.SIGTERM, signal.SIGTERM]


def test_a_signal_to_the_supervisor_then_one_to_the_group_count_twice() -> None:
    chain, seen = counting_chain()
    chain.relayed(1, signal.SIGTERM)
    deliver(chain, signal.SIGINT)
    chain.relayed(2, signal.SIGINT)
    assert len(seen) == 2


def test_a_stale_relay_count_changes_nothing() -> None:
    chain, seen = counting_chain()
    chain.relayed(2, signal.SIGTERM)
    chain.relayed(1, signal.SIGTERM)
    assert len(seen) == 2


async def test_an_installed_chain_receives_the_relay() -> None:
    from admission.lifecycle import signals

    chain, seen = counting_chain()
    previous = {sig: signal.getsignal(sig) for sig in signals.HANDLED}
    try:
        assert chain.install()
        assert signals.relay(1, signal.SIGTERM)
        assert seen == [signal.SIGTERM]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        signals._installed = None
    await asyncio.sleep(0)


async def test_a_handler_the_server_gave_the_loop_runs_only_when_the_chain_forwards() -> None:
    from admission.lifecycle import signals

    # hypercorn (--workers 0) and granian's workers hand SIGTERM to the loop this way.
    loop = asyncio.get_running_loop()
    heard: list[str] = []
    loop.add_signal_handler(signal.SIGTERM, heard.append, "server")
    chain, seen = counting_chain()
    previous_int = signal.getsignal(signal.SIGINT)
    try:
        assert chain.install()
        assert chain.in_loop(signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        await until(lambda: seen == [signal.SIGTERM], what="the chain hears SIGTERM")
        assert heard == []
        chain.forward(signal.SIGTERM, None)
        assert heard == ["server"]
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGINT, previous_int)
        signals._installed = None
