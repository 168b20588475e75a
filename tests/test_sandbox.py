"""Chapter 09: the code sandbox — results, limits, bad input, and a fast subset of the attack corpus.

The full corpus (>= 10,000 inputs) is ``python scripts/attack_sandbox.py``; here every
hand-written escape runs once with all layers, and the dangerous ones again with the audit
hook off, so the operating-system layers are shown to hold on their own where they exist.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from course_lib import sandbox, tools

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("attack_sandbox", ROOT / "scripts" / "attack_sandbox.py")
attack = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(attack)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox uses Linux rlimits")

LAYERS = sandbox.layers() if sys.platform.startswith("linux") else ()
OS_LAYERS = {"uid", "pidns", "netns", "mountns"} <= set(LAYERS)


@pytest.fixture(scope="module")
def arena():
    a = attack.Arena()
    yield a
    a.close()


def test_round_trip_and_result_fields():
    r = sandbox.run("print(1+1)")
    assert r.stdout == "2\n" and r.stderr == "" and r.returncode == 0 and r.ok
    assert not r.timed_out and not r.killed and not r.truncated
    assert r.layers == LAYERS and {"rlimits", "empty-env", "isolated-interpreter", "audit-hook"} <= set(r.layers)
    assert 0 < r.seconds < 10 and r.max_rss_mb > 0
    assert not os.path.exists(os.path.dirname(r.workdir))  # the temporary directory is gone


def test_exit_status_errors_and_working_directory():
    r = sandbox.run("import sys\nsys.exit(3)")
    assert r.returncode == 3 and not r.ok
    r = sandbox.run("1/0")
    assert r.returncode == 1 and r.stderr.splitlines()[-1] == "ZeroDivisionError: division by zero"
    assert '"<sandbox>", line 1' in r.stderr and "_sandbox" not in r.stderr  # the runner's frames are hidden
    r = sandbox.run("import os\nopen('f.txt', 'w').write('hi')\nprint(open('f.txt').read(), len(os.listdir('.')))")
    assert r.stdout == "hi 1\n"
    r = sandbox.run("import os\nprint(sorted(os.environ))")
    assert r.stdout in ("[]\n", "['LC_CTYPE']\n")  # empty (Python's C-locale coercion may add LC_CTYPE itself)
    r = sandbox.run("import sys\nprint(sys.flags.isolated, sys.flags.no_site, sys.flags.dont_write_bytecode)")
    assert r.stdout == "1 1 1\n"


def test_timeout_kills_and_never_blocks_the_parent():
    t0 = time.perf_counter()
    r = sandbox.run("while True:\n    pass", timeout=0.5)
    assert r.timed_out and r.killed and r.returncode == -signal.SIGKILL
    assert time.perf_counter() - t0 < 0.5 + 3.0
    r = sandbox.run("import os\nos.close(1)\nos.close(2)\nwhile True:\n    pass", timeout=0.5)
    assert r.timed_out


def test_output_is_truncated_and_decoded_safely():
    r = sandbox.run("while True:\n    print('x' * 1000)", max_output=5000)
    assert r.truncated and r.killed and len(r.stdout) == 5000
    r = sandbox.run('import sys\nsys.stdout.buffer.write(b"\\xff\\xfe ok \\xc3")\nsys.stderr.buffer.write(b"\\x80")')
    assert r.stdout == "\ufffd\ufffd ok \ufffd" and r.stderr == "\ufffd" and r.returncode == 0


def test_memory_and_file_limits():
    r = sandbox.run("x = bytearray(1 << 31)", memory_mb=128)
    assert r.returncode == 1 and "MemoryError" in r.stderr
    r = sandbox.run("x = []\nwhile True:\n    x.append(bytearray(1 << 20))", memory_mb=128, timeout=5)
    assert r.returncode != 0 and r.max_rss_mb <= 128
    r = sandbox.run("open('big', 'wb').write(b'x' * (3 << 20))", file_mb=1)
    assert r.returncode != 0  # SIGXFSZ or an OSError: the file stopped at the limit


def test_bad_arguments_name_the_argument():
    with pytest.raises(TypeError, match="code"):
        sandbox.run(b"print(1)")
    with pytest.raises(ValueError, match="code must be at most"):
        sandbox.run("#" * (sandbox.MAX_CODE_CHARS + 1))
    for kw, name in [
        ({"timeout": 0}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"memory_mb": 1}, "memory_mb"),
        ({"max_output": 0}, "max_output"),
        ({"processes": 0}, "processes"),
        ({"audit_hook": "yes"}, "audit_hook"),
    ]:
        with pytest.raises((TypeError, ValueError), match=name):
            sandbox.run("pass", **kw)


def test_python_tool_through_the_protocol():
    reg = tools.Registry([tools.python_tool(timeout=2.0), tools.calculator_tool()])
    call = tools.parse_call('<call>{"name": "python", "arguments": {"code": "print(sum(range(10)))"}}</call>', reg)
    assert tools.run_call(call, reg) == "45"
    out = reg["python"](code="import socket")
    assert out.startswith("error: PermissionError: sandbox: import socket is not allowed")
    assert reg["python"](code="while True:\n    pass").endswith("error: timed out after 2 s")

    def generate(text, n):
        if "<result>" not in text:
            return '<call>{"name": "python", "arguments": {"code": "print(2**10)"}}</call>'
        return " 1024\n"

    r = tools.run_agent(generate, "Q: 2**10?\nA:", reg)
    assert r.answer == "1024" and r.log[0].result == "1024" and r.tool_seconds > 0


# --------------------------------------------------------------------------- attacks (fast subset)

FAST = [(name, code) for name, code in attack.HAND_WRITTEN]
SLOW_NAMES = {"infinite loop", "sleep past timeout", "close fds and spin", "signal handler escape", "thread bomb"}


@pytest.mark.parametrize("name, template", FAST, ids=[n for n, _ in FAST])
def test_hand_written_attack_does_not_escape(arena, name, template):
    code, marker = arena.code(template)
    timeout = 0.5 if name in SLOW_NAMES else 1.5
    r = sandbox.run(code, timeout=timeout, memory_mb=128, max_output=4096)
    assert arena.check(r, marker, timeout=timeout, memory_mb=128) == []


DANGEROUS = [
    "write /tmp",
    "write /dev/shm",
    "write arena",
    "overwrite canary",
    "read secret file",
    "read parent environ",
    "tcp connect",
    "udp send",
    "unix connect",
    "fork bomb",
    "daemon",
    "daemon setpgid",
    "ctypes libc system",
    "ctypes libc kill",
    "os.system",
    "subprocess",
    "kill parent",
    "kill -1",
    "setuid root",
    "memory bomb",
]


@pytest.mark.skipif(not OS_LAYERS, reason=f"uid and namespace layers are not in force here ({LAYERS})")
@pytest.mark.parametrize("name", DANGEROUS)
def test_os_layers_hold_without_the_audit_hook(arena, name):
    template = dict(attack.HAND_WRITTEN)[name]
    code, marker = arena.code(template)
    r = sandbox.run(code, timeout=1.0, memory_mb=128, max_output=4096, audit_hook=False)
    assert "audit-hook" not in r.layers
    assert arena.check(r, marker, timeout=1.0, memory_mb=128) == []


#: Attacks whose payload only touches the arena (a temporary directory), so running them with
#: the audit hook as the only file-system layer cannot harm the machine even if it failed.
HOOK_ALONE = [
    "write arena",
    "overwrite canary",
    "append canary",
    "os.open write",
    "symlink out",
    "rename canary",
    "remove canary",
    "chmod canary",
    "mkdir arena",
    "pathlib write",
    "shutil copy",
    "io.open write",
    "_io.FileIO write",
    "os.truncate canary",
    "os.utime canary",
    "dir_fd escape",
    "fwalk dir_fd",
    "patched realpath",
    "fchmod canary",
    "sqlite file",
]


@pytest.mark.parametrize("name", HOOK_ALONE)
def test_audit_hook_alone_keeps_writes_inside(arena, name):
    """What a machine without root has: rlimits, seccomp and the hook; no uid, no namespaces."""
    code, marker = arena.code(dict(attack.HAND_WRITTEN)[name])
    r = sandbox.run(code, timeout=1.5, namespaces=False, drop_privileges=False)
    assert {"uid", "mountns"}.isdisjoint(r.layers) and "audit-hook" in r.layers
    assert "sandbox:" in r.stderr  # refused by the hook, not by chance
    assert arena.check(r, marker, timeout=1.5, memory_mb=sandbox.MEMORY_MB) == []


@pytest.mark.skipif(not OS_LAYERS, reason=f"uid and namespace layers are not in force here ({LAYERS})")
def test_only_the_working_directory_is_writable_and_no_network():
    code = (
        "import os, socket\n"
        "ok = []\n"
        "for d in ['/tmp', '/var/tmp', '/dev/shm', '/run/lock', '/', os.path.expanduser('~') or '/root']:\n"
        "    try:\n"
        "        open(os.path.join(d, 'probe'), 'w'); ok.append(d)\n"
        "    except OSError:\n"
        "        pass\n"
        "open('here', 'w').write('x')\n"
        "s = socket.socket()\n"
        "print(ok, s.connect_ex(('127.0.0.1', 9)) != 0, len([p for p in os.listdir('/proc') if p.isdigit()]) <= 3)\n"
    )
    r = sandbox.run(code, audit_hook=False, seccomp=False)  # the uid and the namespaces alone
    assert r.stdout == "[] True True\n", r.stderr


@pytest.mark.skipif("seccomp" not in LAYERS, reason=f"no seccomp filter here ({LAYERS})")
def test_seccomp_alone_refuses_sockets_but_not_threads_or_processes():
    code = (
        "import socket, threading, subprocess\n"
        "try:\n"
        "    socket.socket(socket.AF_UNIX)\n"
        "    print('socket made')\n"
        "except PermissionError:\n"
        "    print('refused')\n"
        "t = threading.Thread(target=print, args=('thread',))\n"
        "t.start(); t.join()\n"
        "print(subprocess.run(['/bin/echo', 'child'], capture_output=True).stdout.decode().strip())\n"
    )
    r = sandbox.run(code, audit_hook=False, namespaces=False, drop_privileges=False)
    assert r.stdout == "refused\nthread\nchild\n", r.stderr
    assert "seccomp" in r.layers and "uid" not in r.layers and "netns" not in r.layers


def test_corpus_is_large_deterministic_and_covers_the_issue():
    items = attack.corpus(10_000, seed=0)
    assert len(items) == 10_000 and items == attack.corpus(10_000, seed=0)
    assert len({(t, w) for _, t, w in items}) > 7_500  # mostly distinct before the markers are filled in
    names = " ".join(n for n, _ in attack.HAND_WRITTEN)
    for needed in ["write", "environ", "tcp", "fork bomb", "memory bomb", "infinite loop", "huge output",
                   "kill parent", "daemon", "ctypes", "os.system", "subprocess"]:  # fmt: skip
        assert needed in names


def test_a_generated_sample_does_not_escape(arena):
    items = attack.corpus(400, seed=1)[-12:]  # generated and mutated inputs
    for name, template, wrapper in items:
        code, marker = arena.code(template, wrapper)
        r = sandbox.run(code, timeout=0.5, memory_mb=128, max_output=4096)
        assert arena.check(r, marker, timeout=0.5, memory_mb=128) == [], name


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(code=st.text(max_size=60))
def test_arbitrary_text_never_breaks_the_runner(code):
    r = sandbox.run(code, timeout=1.0)
    assert r.returncode is not None and isinstance(r.stdout, str) and isinstance(r.stderr, str)
    assert r.seconds < 1.0 + 3.0
