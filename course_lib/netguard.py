"""Refuse network connections that leave this machine (tests and notebook kernels).

The course must run offline. ``install()`` patches the socket layer so that connecting to,
or resolving, anything but a loopback address raises :class:`NetworkBlocked` — a test or a
notebook that quietly downloads something then fails loudly instead of passing here and
rotting elsewhere. Unix sockets and 127.0.0.0/8, ::1 (Jupyter's own kernels) still work.
"""

from __future__ import annotations

import ipaddress
import socket

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}
_installed = False


class NetworkBlocked(ConnectionRefusedError):
    """A connection to a non-loopback host was attempted while the guard is installed."""


def _is_local(host) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode()
    host = str(host).strip("[]")
    if host.lower() in _LOCAL_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


def _check(address) -> None:
    if isinstance(address, tuple) and address and not _is_local(address[0]):
        raise NetworkBlocked(
            f"course_lib.netguard: network access to {address[0]!r} is blocked (the course runs offline)"
        )


def install() -> None:
    """Patch ``socket`` so only loopback and Unix-socket connections are allowed (idempotent)."""
    global _installed
    if _installed:
        return
    orig_connect, orig_connect_ex = socket.socket.connect, socket.socket.connect_ex
    orig_getaddrinfo = socket.getaddrinfo

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _check(address)
        return orig_connect(self, address)

    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _check(address)
        return orig_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if not _is_local(host):
            raise NetworkBlocked(f"course_lib.netguard: resolving {host!r} is blocked (the course runs offline)")
        return orig_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.getaddrinfo = getaddrinfo
    _installed = True


def is_installed() -> bool:
    return _installed
