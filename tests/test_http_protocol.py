"""Tests of admission's uvicorn protocol that need no server process: how it keeps its state."""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from admission.config.settings import Settings
from admission.server.protocol import HttpProtocol, ServerLimits
from admission.server.uvicorn import AdmissionConfig


def test_the_protocol_adds_nothing_to_uvicorns_instance_dict() -> None:
    # Past 30 keys CPython stops sharing an instance dict's keys, and every attribute read of
    # the protocol (uvicorn's own, several per request) loses its fast path: admission's
    # state lives in slots instead.
    config = AdmissionConfig("admission.demo:app", limits=ServerLimits.from_settings(Settings()))
    config.load()
    loop = asyncio.new_event_loop()
    try:
        plain = HttpToolsProtocol(config, ServerState(), {}, loop)
        ours = HttpProtocol(config, ServerState(), {}, loop)
    finally:
        loop.close()
    assert set(ours.__dict__) == set(plain.__dict__)
