"""Start aiohttp applications on 127.0.0.1 for tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiohttp import web


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Serve `app` on a free loopback port and yield its base URL."""
    # No access log: request lines carry phone numbers, and tests check the product's logs for them.
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()

    port = site._server.sockets[0].getsockname()[1]  # port 0 picks a free port
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
