"""Keep every benchmark connection on the loopback interface.

The guard wraps `socket.socket.connect`, `connect_ex` and `socket.getaddrinfo`,
so Python code (aiohttp, httpx, asyncio) that tries to reach another host fails
with LoopbackOnlyError instead of leaving the machine. Native code that opens its
own sockets, such as the LiveKit Rust SDK, is not covered. The benchmarks never
connect a room, so that code opens no sockets here.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})

_ORIGINAL_CONNECT = socket.socket.connect
_ORIGINAL_CONNECT_EX = socket.socket.connect_ex
_ORIGINAL_GETADDRINFO = socket.getaddrinfo


class LoopbackOnlyError(PermissionError):
    """A benchmark tried to reach an address outside 127.0.0.0/8 or ::1."""


def install_guard() -> None:
    """Reject connections and name lookups for non-loopback hosts in this process from now on."""
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = _guarded_getaddrinfo


def remove_guard() -> None:
    """Restore the socket functions that `install_guard` replaced."""
    socket.socket.connect = _ORIGINAL_CONNECT  # type: ignore[method-assign]
    socket.socket.connect_ex = _ORIGINAL_CONNECT_EX  # type: ignore[method-assign]
    socket.getaddrinfo = _ORIGINAL_GETADDRINFO


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """Install the guard for the duration of the block."""
    install_guard()
    try:
        yield
    finally:
        remove_guard()


def is_loopback_host(host: str | bytes) -> bool:
    """Tell whether `host` is a loopback name or address."""
    text = host.decode("ascii", "replace") if isinstance(host, bytes) else host
    if text in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


def _guarded_connect(sock: socket.socket, address: Any) -> None:
    _check_address(sock, address)
    return _ORIGINAL_CONNECT(sock, address)


def _guarded_connect_ex(sock: socket.socket, address: Any) -> int:
    _check_address(sock, address)
    return _ORIGINAL_CONNECT_EX(sock, address)


def _guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if host is not None and not is_loopback_host(host):
        raise LoopbackOnlyError(f"benchmarks may only resolve loopback hosts, not {host!r}")
    return _ORIGINAL_GETADDRINFO(host, *args, **kwargs)


def _check_address(sock: socket.socket, address: Any) -> None:
    # Unix sockets and socket pairs carry no host, so only IP families are checked.
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    host = address[0]
    if not is_loopback_host(host):
        raise LoopbackOnlyError(f"benchmarks may only connect to loopback addresses, not {host!r}")
