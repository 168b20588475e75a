import socket
import subprocess
import sys

import pytest

from course_lib import netguard


def test_guard_installed_in_tests():
    assert netguard.is_installed()


def test_non_loopback_refused():
    with pytest.raises(netguard.NetworkBlocked):
        socket.create_connection(("93.184.216.34", 80), timeout=1)
    with pytest.raises(netguard.NetworkBlocked):
        socket.getaddrinfo("example.com", 443)


def test_loopback_allowed():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    c = socket.create_connection(srv.getsockname(), timeout=1)
    c.close()
    srv.close()


def test_child_processes_are_guarded():
    """Kernels started by nbval inherit the guard through sitecustomize on PYTHONPATH."""
    code = "import socket\ntry:\n    socket.create_connection(('1.1.1.1', 53), timeout=1)\nexcept ConnectionRefusedError as e:\n    print('blocked', type(e).__name__)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "blocked NetworkBlocked" in out.stdout, out.stderr


@pytest.mark.parametrize(
    "call",
    [
        lambda: socket.gethostbyname("example.com"),
        lambda: socket.gethostbyname_ex("example.com"),
        lambda: socket.gethostbyaddr("93.184.216.34"),
    ],
    ids=["gethostbyname", "gethostbyname_ex", "gethostbyaddr"],
)
def test_name_lookups_refused(call):
    with pytest.raises(netguard.NetworkBlocked):
        call()


def test_udp_datagrams_refused_but_loopback_allowed():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with pytest.raises(netguard.NetworkBlocked):
            s.sendto(b"x", ("1.1.1.1", 53))
        with pytest.raises(netguard.NetworkBlocked):
            s.sendto(b"x", 0, ("1.1.1.1", 53))
        with pytest.raises(netguard.NetworkBlocked):
            s.sendmsg([b"x"], [], 0, ("1.1.1.1", 53))
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        assert s.sendto(b"ok", sink.getsockname()) == 2
        assert sink.recv(2) == b"ok"
        sink.close()
    finally:
        s.close()


def test_low_level_socket_refused():
    import _socket

    raw = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    try:
        with pytest.raises(netguard.NetworkBlocked):
            raw.connect(("93.184.216.34", 80))
        with pytest.raises(netguard.NetworkBlocked):
            raw.connect_ex(("93.184.216.34", 80))
    finally:
        raw.close()
