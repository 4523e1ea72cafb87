"""tests.test_ws_messages: `ADMISSION_WS_MESSAGE_RATE` limits the messages each websocket
connection may send: the one over the limit never reaches the application, the socket is
closed with 1008 and a reason, and the metrics count it."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from admission import AdmissionMiddleware, Settings
from tests.asgi import ECHOED, echo_text


def _app(**settings: object) -> Starlette:
    app = Starlette(routes=[WebSocketRoute("/echo", echo_text)])
    app.add_middleware(AdmissionMiddleware, settings=Settings(**settings))  # type: ignore[arg-type]
    return app


def test_the_message_over_the_rate_closes_the_socket_with_1008() -> None:
    ECHOED.clear()
    with TestClient(_app(ws_message_rate="10/minute")) as client:
        with client.websocket_connect("/echo") as socket:
            for i in range(10):
                socket.send_text(f"m{i}")
                assert socket.receive_text() == f"m{i}"
            socket.send_text("one too many")
            with pytest.raises(WebSocketDisconnect) as closed:
                socket.receive_text()
        assert closed.value.code == 1008
        assert closed.value.reason == "ws_message_rate"
        assert [f"m{i}" for i in range(10)] == ECHOED
        metrics = client.get("/metrics").text
    assert 'admission_rejected_total{policy="",reason="ws_message_rate"} 1.0' in metrics


def test_each_connection_has_its_own_budget() -> None:
    with TestClient(_app(ws_message_rate="3/minute")) as client:
        for _ in range(2):
            with client.websocket_connect("/echo") as socket:
                for i in range(3):
                    socket.send_text(str(i))
                    assert socket.receive_text() == str(i)


def test_without_the_setting_messages_are_not_counted() -> None:
    with TestClient(_app()) as client, client.websocket_connect("/echo") as socket:
        for i in range(50):
            socket.send_text(str(i))
            assert socket.receive_text() == str(i)
