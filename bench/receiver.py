"""Webhook receiver for the benchmarks, run in its own process on 127.0.0.1.

`python -m bench.receiver --mode verify` checks every request with
`webhooks.verify` and responds 200 only when both signatures match, else 401.
`--mode plain` reads the body and responds 200 without any check, which gives the
loopback limit of aiohttp itself. `--delay` delays each response by that many seconds.
The process prints its URL on the first line of standard output and exits when
its standard input closes, so it never outlives the benchmark.

`receiver_process` starts it from a benchmark. A separate process has its own
event loop and interpreter lock, so the receiver's work does not count against
the client's event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web

import webhooks

HOST = "127.0.0.1"
SECRET = b"bench-webhook-secret"
VERIFY = "verify"
PLAIN = "plain"

_STATS: web.AppKey[dict[str, int]] = web.AppKey("stats", dict)
_START_TIMEOUT = 20.0
_STOP_TIMEOUT = 5.0


def create_app(*, mode: str, delay: float = 0.0, secret: bytes = SECRET) -> web.Application:
    """Build the receiver: POST /webhooks takes an event, GET /stats returns the counters."""
    if mode not in (VERIFY, PLAIN):
        raise ValueError(f"invalid receiver mode {mode!r}; expected {VERIFY!r} or {PLAIN!r}")

    app = web.Application()
    app[_STATS] = {"received": 0, "verified": 0, "rejected": 0}

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        stats = request.app[_STATS]
        stats["received"] += 1
        if delay:
            await asyncio.sleep(delay)
        if mode == PLAIN:
            return web.Response(text="ok")

        try:
            webhooks.verify(secret, request.headers, body)
        except webhooks.WebhookVerificationError:
            stats["rejected"] += 1
            return web.Response(status=401, text="signature invalid")
        stats["verified"] += 1
        return web.Response(text="ok")

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(request.app[_STATS])

    app.router.add_post("/webhooks", receive)
    app.router.add_get("/stats", stats)
    return app


@dataclass(frozen=True)
class Receiver:
    """A running receiver process. `url` is its POST /webhooks address."""

    url: str
    pid: int

    async def stats(self, http: aiohttp.ClientSession) -> dict[str, int]:
        """Return the receiver's counters: received, verified and rejected requests."""
        stats_url = self.url.removesuffix("/webhooks") + "/stats"
        async with http.get(stats_url, timeout=aiohttp.ClientTimeout(total=5)) as response:
            response.raise_for_status()
            return await response.json()


@contextlib.asynccontextmanager
async def receiver_process(*, mode: str, delay: float = 0.0) -> AsyncIterator[Receiver]:
    """Run `python -m bench.receiver` in a child process for the duration of the block."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.receiver",
        "--mode",
        mode,
        "--delay",
        str(delay),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    try:
        async with asyncio.timeout(_START_TIMEOUT):
            first_line = await process.stdout.readline()
        url = first_line.decode().strip()
        if not url.startswith(f"http://{HOST}:"):
            raise RuntimeError(f"benchmark receiver failed to start; it printed {first_line!r}")
        yield Receiver(url=url, pid=process.pid)
    finally:
        await _stop(process)


async def _stop(process: asyncio.subprocess.Process) -> None:
    # Closing stdin makes the receiver exit. Only this child is terminated if it does not.
    if process.stdin is not None:
        process.stdin.close()
    try:
        async with asyncio.timeout(_STOP_TIMEOUT):
            await process.wait()
    except TimeoutError:
        process.terminate()
        await process.wait()


async def _serve(mode: str, delay: float) -> None:
    runner = web.AppRunner(create_app(mode=mode, delay=delay), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # port 0 picks a free port
    print(f"http://{HOST}:{port}/webhooks", flush=True)

    try:
        await _wait_for_stdin_eof()
    finally:
        await runner.cleanup()


async def _wait_for_stdin_eof() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.read(4096):
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.receiver", description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=(VERIFY, PLAIN), default=VERIFY, help="check signatures or not (default: %(default)s)")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to hold each response (default: %(default)s)")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.mode, args.delay))


if __name__ == "__main__":
    main()
