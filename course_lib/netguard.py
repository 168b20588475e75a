"""Refuse network connections that leave this machine (tests and notebook kernels).

The course must run offline. ``install()`` patches the socket layer so that connecting to,
sending a datagram to, or resolving anything but a loopback address raises
:class:`NetworkBlocked` — a test or a notebook that quietly downloads something then fails
loudly instead of passing here and rotting elsewhere. Unix sockets and 127.0.0.0/8, ::1
(Jupyter's own kernels) still work.

What it covers: ``socket.socket`` ``connect``/``connect_ex``/``sendto``/``sendmsg``, the
low-level ``_socket.socket`` the same way (its name is rebound to a guarded subclass), and
name lookups (``getaddrinfo``, ``gethostbyname``, ``gethostbyname_ex``, ``gethostbyaddr``).
What it cannot cover: a subprocess that is not Python, or a Python started without the
guard (the tests put ``tests/netguard_site`` on ``PYTHONPATH`` so their children install
it; the notebook executor does the same for every kernel), and C extensions that open
sockets in C. It is a tripwire for accidents, not a sandbox.
"""

from __future__ import annotations

import _socket
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


def _guard_methods(cls) -> dict:
    """Guarded ``connect``, ``connect_ex``, ``sendto`` and ``sendmsg`` built on ``cls``'s own."""
    orig = {name: getattr(cls, name) for name in ("connect", "connect_ex", "sendto", "sendmsg")}

    def _inet(sock) -> bool:
        return sock.family in (socket.AF_INET, socket.AF_INET6)

    def connect(self, address):
        if _inet(self):
            _check(address)
        return orig["connect"](self, address)

    def connect_ex(self, address):
        if _inet(self):
            _check(address)
        return orig["connect_ex"](self, address)

    def sendto(self, data, *args):
        if _inet(self) and args:
            _check(args[-1])  # sendto(data, address) or sendto(data, flags, address)
        return orig["sendto"](self, data, *args)

    def sendmsg(self, buffers, ancdata=(), flags=0, address=None):
        if _inet(self) and address is not None:
            _check(address)
        if address is None:
            return orig["sendmsg"](self, buffers, ancdata, flags)
        return orig["sendmsg"](self, buffers, ancdata, flags, address)

    return {"connect": connect, "connect_ex": connect_ex, "sendto": sendto, "sendmsg": sendmsg}


def _guard_lookup(fn, what: str):
    def lookup(host, *args, **kwargs):
        if not _is_local(host):
            raise NetworkBlocked(f"course_lib.netguard: {what} {host!r} is blocked (the course runs offline)")
        return fn(host, *args, **kwargs)

    return lookup


def install() -> None:
    """Patch ``socket`` and ``_socket`` so only loopback and Unix-socket traffic is allowed (idempotent)."""
    global _installed
    if _installed:
        return
    for name, method in _guard_methods(socket.socket).items():
        setattr(socket.socket, name, method)
    # _socket.socket is a C type whose methods cannot be patched; code that uses it directly
    # gets a guarded subclass instead (socket.socket already subclasses the original).
    raw = type("socket", (_socket.socket,), _guard_methods(_socket.socket))
    _socket.socket = _socket.SocketType = raw
    socket.getaddrinfo = _guard_lookup(socket.getaddrinfo, "resolving")
    socket.gethostbyname = _guard_lookup(socket.gethostbyname, "resolving")
    socket.gethostbyname_ex = _guard_lookup(socket.gethostbyname_ex, "resolving")
    socket.gethostbyaddr = _guard_lookup(socket.gethostbyaddr, "looking up")
    _installed = True


def is_installed() -> bool:
    return _installed
