"""admission.lifecycle.lifespan: admission's start-up and shutdown around the application's
own, over the ASGI lifespan protocol."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from admission.lifecycle.drain import Drain
from admission.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("admission")


class Lifespan:
    """Lifespan runs the application's lifespan with admission's around it: `startup` first,
    and at shutdown the drain before the application's own shutdown, the release of resources
    after it. An application that doesn't speak lifespan gets it done for it. `running` is True
    once a lifespan has begun: the server will run its shutdown, which releases the resources.
    """

    def __init__(
        self,
        drain: Drain,
        startup: Callable[[], Awaitable[None]],
        served: Callable[[], bool] = lambda: True,
    ) -> None:
        self.drain = drain
        self.startup = startup
        self.served = served
        self.running = False

    async def __call__(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        """__call__ serves one lifespan scope for `app`."""
        seen: dict[str, bool] = {"startup": False, "answered": False, "shutdown": False}
        self.running = True
        drain = self.drain

        async def receive_() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                seen["startup"] = True
                await self.startup()
            elif message["type"] == "lifespan.shutdown":
                seen["shutdown"] = True
                quiet = not drain.begun and not self.served()
                if quiet:
                    # No signal began a drain and nothing was admitted: the server is stopping
                    # before it served (its port was taken, say), so there is nothing to drain.
                    log.info("shutting down before any request was admitted: nothing to drain")
                await drain.until_drained(delay_s=0, quiet=quiet)
            return message

        async def send_(message: Message) -> None:
            kind = message["type"]
            if kind.startswith("lifespan.startup."):
                seen["answered"] = True
            elif kind.startswith("lifespan.shutdown."):
                await drain.run(delay_s=0)
            await send(message)

        try:
            await app(scope, receive_, send_)
        except Exception:
            if seen["answered"]:
                raise
            log.debug("the application does not support lifespan; admission runs it alone")
        if seen["answered"]:
            return
        if not seen["startup"]:
            await receive_()
        await send({"type": "lifespan.startup.complete"})
        if not seen["shutdown"]:
            await receive_()
        await drain.run(delay_s=0)
        await send({"type": "lifespan.shutdown.complete"})
