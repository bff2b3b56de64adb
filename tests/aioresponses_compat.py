"""Let aioresponses 0.7.9 build responses under aiohttp 3.14.

aiohttp 3.14 added a required keyword `stream_writer` to `ClientResponse.__init__`,
which aioresponses 0.7.9 does not pass, so every mocked request raises TypeError.
The `mock_http` fixture in conftest.py patches `aioresponses.core.ClientResponse`
with `CompatClientResponse` below.

NOTE: remove this module and the patch in `mock_http` once an aioresponses release
passes `stream_writer` itself. aiohttp cannot be pinned below 3.14 instead, because
livekit-api 1.2.2 requires aiohttp>=3.14.4.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from yarl import URL


class UnsentRequestWriter:
    """Stand-in for the stream writer of a request that was never sent.

    With `writer=None`, as aioresponses passes, aiohttp 3.14 reads only `output_size`
    from the stream writer, to report how many request bytes were written.
    """

    output_size = 0


class CompatClientResponse(aiohttp.ClientResponse):
    """`ClientResponse` that supplies an `UnsentRequestWriter` when no `stream_writer` is passed."""

    def __init__(self, method: str, url: URL, *, stream_writer: Any = None, **kwargs: Any) -> None:
        if stream_writer is None:
            stream_writer = UnsentRequestWriter()
        super().__init__(method, url, stream_writer=stream_writer, **kwargs)
