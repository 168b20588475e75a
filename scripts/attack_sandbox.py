"""Attack the code sandbox (course_lib.sandbox) with a corpus of hostile snippets and count escapes.

    python scripts/attack_sandbox.py                 # the full corpus: >= 10,000 inputs
    python scripts/attack_sandbox.py --n 500 --workers 2 --no-hook   # OS layers alone

The corpus is hand-written escapes (write outside the working directory, read the parent's
environment or a root-only file, open sockets, fork bomb, memory bomb, infinite loop,
huge output, signal the parent, leave a process behind, ctypes -> libc, os.system,
subprocess, ...) plus generated ones: each attack's action wrapped in evasions (getattr
and ``__import__`` by string, ``exec`` of base64, ``importlib``, threads, ``atexit``,
``__del__``, exception handlers, signal handlers) aimed at varied targets, random
mutations of the hand-written attacks (characters deleted, inserted, duplicated) and
random programs. All are drawn from a seeded ``random.Random``: the same seed gives the
same corpus.

An *escape* is any of (checked after every input by an :class:`Arena` set up around the runs):

* a file written or changed outside the sandbox directory: marker files in every
  world-writable place, canary files (world-writable, in a world-writable directory)
  whose content and mtime must not change, and at the end one scan of the whole root
  filesystem for any file owned by a sandbox uid;
* a network connection made: a TCP listener, a UDP socket and a world-writable unix
  socket in the parent must receive nothing;
* a process alive after the call returned: none with the run's uid, process group or session;
* the parent signalled (SIGUSR1, SIGUSR2, SIGHUP, SIGTERM, SIGINT handlers count) or blocked
  past the timeout (plus a slack for a busy machine), or the runner raising;
* memory beyond the limit (peak RSS of the snippet's processes);
* a secret leaked: a random token in the parent's environment and in a root-only file
  must not appear in the snippet's output.

Prints the inputs tried, the escapes found (with the input), the worst-case wall time and
the layers in force; writes the same as JSON with ``--json PATH``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import secrets
import signal
import socket
import stat
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from course_lib import sandbox  # noqa: E402

#: Wall-clock slack past the timeout before a run counts as "parent blocked" (a busy 2-core
#: machine can delay the clean-up; the worst case is reported separately).
SLACK_S = 3.0
WATCHED_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP, signal.SIGTERM, signal.SIGINT)

# --------------------------------------------------------------------------- the corpus

#: Hand-written attacks: (name, code). Placeholders: {marker} (a unique file name),
#: {arena} (a world-writable directory), {canary}, {secret_file}, {port}, {udp_port},
#: {unix}, {ppid} (the parent's pid), {parent_cwd}.
HAND_WRITTEN = [
    ("write /tmp", "open('/tmp/{marker}', 'w').write('x')"),
    ("write /var/tmp", "open('/var/tmp/{marker}', 'w').write('x')"),
    ("write /dev/shm", "open('/dev/shm/{marker}', 'w').write('x')"),
    ("write /run/lock", "open('/run/lock/{marker}', 'w').write('x')"),
    ("write arena", "open('{arena}/{marker}', 'w').write('x')"),
    ("overwrite canary", "open('{canary}', 'w').write('pwned')"),
    ("append canary", "open('{canary}', 'a').write('pwned')"),
    ("write parent cwd", "open('{parent_cwd}/{marker}', 'w').write('x')"),
    ("write ../", "open('../{marker}', 'w').write('x')"),
    (
        "os.open write",
        "import os\nfd = os.open('{arena}/{marker}', os.O_CREAT | os.O_WRONLY, 0o666)\nos.write(fd, b'x')",
    ),
    ("symlink out", "import os\nos.symlink('{arena}/{marker}', 'link')\nopen('link', 'w').write('x')"),
    ("rename canary", "import os\nos.rename('{canary}', '{arena}/{marker}')"),
    ("remove canary", "import os\nos.remove('{canary}')"),
    ("chmod canary", "import os\nos.chmod('{canary}', 0o600)"),
    ("mkdir arena", "import os\nos.mkdir('{arena}/{marker}')"),
    ("pathlib write", "import pathlib\npathlib.Path('{arena}/{marker}').write_text('x')"),
    ("shutil copy", "import shutil\nopen('a', 'w').write('x')\nshutil.copy('a', '{arena}/{marker}')"),
    ("read secret file", "print(open('{secret_file}').read())"),
    ("read parent environ", "print(open('/proc/{ppid}/environ', 'rb').read())"),
    ("read own environ", "import os\nprint(dict(os.environ))"),
    (
        "walk /proc environ",
        "import os\nfor p in os.listdir('/proc'):\n    try: print(open('/proc/%s/environ' % p, 'rb').read())\n    except Exception: pass",
    ),
    ("read parent cmdline+cwd", "import os\nprint(os.readlink('/proc/{ppid}/cwd'))"),
    ("tcp connect", "import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\ns.sendall(b'hi')"),
    (
        "udp send",
        "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'hi', ('127.0.0.1', {udp_port}))",
    ),
    ("unix connect", "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('{unix}')\ns.sendall(b'hi')"),
    (
        "raw _socket",
        "import _socket\ns = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)\ns.connect(('127.0.0.1', {port}))",
    ),
    ("dns", "import socket\nprint(socket.getaddrinfo('example.com', 80))"),
    ("urllib", "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}/', timeout=1)"),
    ("fork bomb", "import os\nwhile True:\n    os.fork()"),
    ("fork bomb try", "import os\nwhile True:\n    try: os.fork()\n    except Exception: pass"),
    (
        "thread bomb",
        "import threading, time\nwhile True:\n    threading.Thread(target=time.sleep, args=(100,)).start()",
    ),
    ("memory bomb", "x = bytearray(1 << 33)"),
    ("memory creep", "x = []\nwhile True:\n    x.append(' ' * 10**6)"),
    ("infinite loop", "while True:\n    pass"),
    ("sleep past timeout", "import time\ntime.sleep(60)"),
    ("huge output", "while True:\n    print('x' * 10000)"),
    ("huge stderr", "import sys\nwhile True:\n    sys.stderr.write('y' * 10000)"),
    ("binary output", "import sys\nsys.stdout.buffer.write(bytes(range(256)) * 4)"),
    ("kill parent", "import os, signal\nos.kill({ppid}, signal.SIGTERM)"),
    ("kill parent usr1", "import os, signal\nos.kill({ppid}, signal.SIGUSR1)"),
    ("kill -1", "import os, signal\nos.kill(-1, signal.SIGUSR1)"),
    ("killpg 0", "import os, signal\nos.killpg(0, signal.SIGUSR1)"),
    ("kill getppid", "import os, signal\nos.kill(os.getppid(), signal.SIGUSR1)"),
    (
        "daemon",
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(30)\n    os._exit(0)",
    ),
    ("daemon setpgid", "import os, time\nif os.fork() == 0:\n    os.setpgid(0, 0)\n    time.sleep(30)"),
    ("ctypes libc system", "import ctypes\nctypes.CDLL(None).system(b'touch {arena}/{marker}')"),
    ("ctypes libc kill", "import ctypes\nctypes.CDLL('libc.so.6').kill({ppid}, 10)"),
    ("ctypes via _ctypes", "import _ctypes\nprint(_ctypes.dlopen(None))"),
    ("os.system", "import os\nos.system('touch {arena}/{marker}')"),
    ("os.popen", "import os\nprint(os.popen('id').read())"),
    ("subprocess", "import subprocess\nsubprocess.run(['touch', '{arena}/{marker}'])"),
    ("subprocess shell", "import subprocess\nsubprocess.run('touch {arena}/{marker}', shell=True)"),
    ("execv", "import os\nos.execv('/bin/sh', ['sh', '-c', 'touch {arena}/{marker}'])"),
    ("posix_spawn", "import os\nos.posix_spawn('/usr/bin/touch', ['touch', '{arena}/{marker}'], {{}})"),
    ("_posixsubprocess", "import _posixsubprocess\nprint(_posixsubprocess)"),
    ("multiprocessing", "import multiprocessing\nmultiprocessing.Process(target=print).start()"),
    ("pty spawn", "import pty\npty.spawn('/bin/sh')"),
    ("setuid root", "import os\nos.setuid(0)\nopen('{arena}/{marker}', 'w')"),
    ("su binary", "import os\nos.execv('/bin/su', ['su'])"),
    ("ptrace parent", "import os\nprint(open('/proc/{ppid}/mem', 'rb').read(1))"),
    ("gc hook bypass", "import gc\nfor o in gc.get_objects():\n    pass\nopen('{arena}/{marker}', 'w')"),
    (
        "sys.modules ctypes",
        "import sys\nprint(sys.modules.get('ctypes'))\nsys.modules['ctypes'].CDLL(None).system(b'touch {arena}/{marker}')",
    ),
    (
        "importlib ctypes",
        "import importlib\nimportlib.import_module('ctypes').CDLL(None).system(b'touch {arena}/{marker}')",
    ),
    ("builtins __import__", "__builtins__['__import__' if isinstance(__builtins__, dict) else 0]"),
    ("io.open write", "import io\nio.open('{arena}/{marker}', 'w').write('x')"),
    ("_io.FileIO write", "import _io\n_io.FileIO('{arena}/{marker}', 'w').write(b'x')"),
    ("os.truncate canary", "import os\nos.truncate('{canary}', 0)"),
    ("os.utime canary", "import os\nos.utime('{canary}', (0, 0))"),
    ("mkfifo", "import os\nos.mkfifo('{arena}/{marker}')"),
    ("write /proc/sys", "open('/proc/sys/kernel/hostname', 'w').write('pwned')"),
    ("mount", "import os\nos.system('mount -t tmpfs none /mnt')"),
    ("sethostname", "import socket\nsocket.sethostname('pwned')"),
    ("raise rlimit", "import resource\nresource.setrlimit(resource.RLIMIT_NPROC, (10**6, 10**6))"),
    ("close fds and spin", "import os\nos.close(1)\nos.close(2)\nwhile True:\n    pass"),
    ("deep recursion", "def f(n):\n    return f(n + 1)\nf(0)"),
    ("compile bomb", "exec('1+' * 10**6 + '1')"),
    ("int str bomb", "print(len(str(10**100000)))"),
    ("pow bomb", "print(9**9**9)"),
    ("tempfile escape", "import tempfile\nprint(tempfile.mkstemp(dir='/tmp'))"),
    ("chdir / write", "import os\nos.chdir('/tmp')\nopen('{marker}', 'w').write('x')"),
    (
        "file descriptor walk",
        "import os\nfor fd in range(3, 64):\n    try: os.write(fd, b'x')\n    except OSError: pass",
    ),
    (
        "signal handler escape",
        "import signal, os\nsignal.signal(signal.SIGALRM, lambda *a: open('{arena}/{marker}', 'w'))\nsignal.alarm(1)\nimport time\ntime.sleep(2)",
    ),
    ("atexit escape", "import atexit\natexit.register(lambda: open('{arena}/{marker}', 'w'))"),
    ("__del__ escape", "class A:\n    def __del__(self):\n        open('{arena}/{marker}', 'w')\na = A()"),
    ("non-utf8 filename", "open(b'/tmp/{marker}\\xff', 'w')"),
    ("many files", "for i in range(1000):\n    open('f%d' % i, 'w').write('x' * 1000)"),
    ("big file", "open('big', 'wb').write(b'x' * (1 << 30))"),
    (
        "dir_fd escape",
        "import os\nfd = os.open('{arena}', os.O_RDONLY)\nos.open('{marker}', os.O_CREAT | os.O_WRONLY, dir_fd=fd)",
    ),
    ("dir_fd via ..", "import os\nfd = os.open('..', os.O_RDONLY)\nos.mkdir('{marker}', dir_fd=fd)"),
    (
        "fwalk dir_fd",
        "import os\nfor _, _, _, fd in os.fwalk('{arena}'):\n    os.open('{marker}', os.O_CREAT | os.O_WRONLY, dir_fd=fd)",
    ),
    (
        "patched realpath",
        "import posixpath, os\nposixpath.realpath = os.path.realpath = lambda p, **k: os.getcwd()\nopen('{arena}/{marker}', 'w')",
    ),
    ("fchmod canary", "import os\nfd = os.open('{canary}', os.O_RDONLY)\nos.fchmod(fd, 0o600)"),
    ("sqlite file", "import sqlite3\nsqlite3.connect('{arena}/{marker}').execute('create table t(x)')"),
    (
        "shared memory",
        "from multiprocessing import shared_memory\nshared_memory.SharedMemory('{marker}', create=True, size=8)",
    ),
]

#: Evasions: how an action is wrapped (the action is indented code).
WRAPPERS = [
    ("plain", "{action}"),
    ("try", "try:\n{indented}\nexcept BaseException as e:\n    print('blocked', type(e).__name__)"),
    ("exec b64", "import base64\nexec(base64.b64decode('{b64}').decode())"),
    ("exec compile", "exec(compile({src!r}, 'x', 'exec'))"),
    ("function", "def attack():\n{indented}\nattack()"),
    ("thread", "import threading\nt = threading.Thread(target=lambda: exec({src!r}))\nt.start()\nt.join()"),
    ("loop 3", "for _ in range(3):\n    try:\n        exec({src!r})\n    except BaseException:\n        pass"),
    ("atexit", "import atexit\natexit.register(lambda: exec({src!r}))"),
    ("del", "class D:\n    def __del__(self):\n        exec({src!r})\nd = D()\ndel d"),
    ("class body", "class C:\n    exec({src!r})"),
    ("eval chr", "exec(''.join(map(chr, {codes})))"),
    ("builtins getattr", "import builtins\ngetattr(builtins, 'ex' + 'ec')({src!r})"),
    ("exception handler", "try:\n    1 / 0\nexcept ZeroDivisionError:\n    exec({src!r})"),
    ("generator", "def g():\n    exec({src!r})\n    yield\nnext(g())"),
]

#: Obfuscated imports an action may use instead of ``import x``.
IMPORTERS = [
    "import {m} as M",
    "M = __import__('{m}')",
    "import importlib\nM = importlib.import_module('{m}')",
    "M = __builtins__.__import__('{m}') if hasattr(__builtins__, '__import__') else __builtins__['__import__']('{m}')",
    "import sys\nM = sys.modules.get('{m}') or __import__('{m}')",
]

#: Generated actions: (module, code using ``M`` for that module).
ACTIONS = [
    ("os", "M.system('touch {target}/{marker}')"),
    ("os", "fd = M.open('{target}/{marker}', M.O_CREAT | M.O_WRONLY, 0o666)\nM.write(fd, b'x')"),
    ("os", "M.kill({ppid}, 10)"),
    ("os", "M.kill(-1, 10)"),
    ("os", "M.killpg(M.getpgid({ppid}), 10)"),
    ("os", "print(open('/proc/{ppid}/environ', 'rb').read())"),
    ("os", "M.execv('/usr/bin/touch', ['touch', '{target}/{marker}'])"),
    ("os", "pid = M.fork()\nif pid == 0:\n    M.setsid()\n    import time\n    time.sleep(20)"),
    ("os", "M.rename('{canary}', '{target}/{marker}')"),
    ("os", "M.remove('{canary}')"),
    ("os", "M.symlink('{target}/{marker}', 'l')\nopen('l', 'w').write('x')"),
    ("subprocess", "M.Popen(['touch', '{target}/{marker}']).wait()"),
    ("subprocess", "M.call('touch {target}/{marker}', shell=True)"),
    ("socket", "s = M.create_connection(('127.0.0.1', {port}), timeout=1)\ns.sendall(b'x')"),
    ("socket", "M.socket(M.AF_INET, M.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', {udp_port}))"),
    ("socket", "s = M.socket(M.AF_UNIX)\ns.connect('{unix}')"),
    ("ctypes", "M.CDLL(None).system(b'touch {target}/{marker}')"),
    ("ctypes", "M.CDLL(None).kill({ppid}, 10)"),
    ("builtins", "M.open('{target}/{marker}', 'w').write('x')"),
    ("builtins", "M.open('{canary}', 'w').write('x')"),
    ("builtins", "print(M.open('{secret_file}').read())"),
    ("io", "M.open('{target}/{marker}', 'wb').write(b'x')"),
    ("pathlib", "M.Path('{target}/{marker}').touch()"),
    ("shutil", "M.copyfile('/etc/hostname', '{target}/{marker}')"),
    ("shutil", "M.rmtree('{arena}')"),
    ("signal", "M.pthread_kill(__import__('threading').main_thread().ident, 10)\nimport os\nos.kill({ppid}, 10)"),
    ("resource", "M.setrlimit(M.RLIMIT_AS, (-1, -1))\nx = bytearray(1 << 33)"),
    ("mmap", "m = M.mmap(-1, 1 << 33)\nm[:] = b'x'"),
    ("threading", "import time\nfor _ in range(64):\n    M.Thread(target=time.sleep, args=(30,), daemon=True).start()"),
    ("gc", "objs = M.get_objects()\nprint(len(objs))"),
]

TARGETS = ["{arena}", "/tmp", "/var/tmp", "/dev/shm", "/run/lock", "{parent_cwd}", ".."]


def _indent(code: str) -> str:
    return "\n".join("    " + line for line in code.splitlines())


def wrap(wrapper: str, action: str) -> str:
    return wrapper.format(
        action=action,
        indented=_indent(action),
        b64=base64.b64encode(action.encode()).decode(),
        src=action,
        codes=[ord(c) for c in action],
    )


def _mutate(code: str, rng: random.Random) -> str:
    chars = list(code)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        i = rng.randrange(len(chars) + 1)
        if op < 0.35 and chars:
            del chars[min(i, len(chars) - 1)]
        elif op < 0.7:
            chars.insert(i, rng.choice("()[]{}:.,'\"\\ \n\t0123456789abcdefxyz_+-*/%=<>#@!$;\x00\xff"))
        else:
            j = rng.randrange(len(chars) + 1)
            chars[i:i] = chars[j : j + rng.randint(1, 12)]
    return "".join(chars)


_STATEMENTS = [
    "x = {n}",
    "x = [i * i for i in range({n})]",
    "print({n} ** 3)",
    "print('a' * {n})",
    "import math\nprint(math.factorial({n} % 200))",
    "d = {{i: str(i) for i in range({n} % 1000)}}",
    "print(sum(range({n})))",
    "s = set(range({n} % 5000))",
    "print(sorted([{n}, 3, 1]))",
    "import json\nprint(json.dumps(list(range({n} % 50))))",
    "print(bytes([{n} % 256]))",
    "print(open('f', 'w').write('{n}'))",
    "raise ValueError({n})",
    "import sys\nsys.stdout.buffer.write(bytes([{n} % 256]))",
]


def _random_program(rng: random.Random) -> str:
    lines = [rng.choice(_STATEMENTS).format(n=rng.randint(0, 10**6)) for _ in range(rng.randint(1, 5))]
    return "\n".join(lines)


def corpus(n: int = 10_000, seed: int = 0) -> list[tuple[str, str, str]]:
    """``n`` attacks (name, code template, wrapper): the hand-written ones, each of them in every
    wrapper, then generated ones. Deterministic for a seed. :meth:`Arena.code` fills the
    template's placeholders and then wraps it."""
    rng = random.Random(seed)
    plain = WRAPPERS[0][1]
    items = [(name, code, plain) for name, code in HAND_WRITTEN]
    for name, code in HAND_WRITTEN:  # every hand-written attack in every wrapper
        for wname, wrapper in WRAPPERS[1:]:
            items.append((f"{name} / {wname}", code, wrapper))
    while len(items) < n:
        kind = rng.random()
        if kind < 0.55:
            module, action = rng.choice(ACTIONS)
            importer = rng.choice(IMPORTERS).format(m=module)
            target = rng.choice(TARGETS)
            code = importer + "\n" + action.replace("{target}", target)
            wname, wrapper = rng.choice(WRAPPERS)
            items.append((f"gen {module} / {wname}", code, wrapper))
        elif kind < 0.8:
            name, code = rng.choice(HAND_WRITTEN)
            wname, wrapper = rng.choice(WRAPPERS[:4])
            items.append((f"mutated {name} / {wname}", _mutate(code, rng), wrapper))
        else:
            items.append(("random program", _random_program(rng), plain))
    return items[:n]


# --------------------------------------------------------------------------- the arena


class Arena:
    """Canaries, secrets and listeners around the runs; :meth:`check` lists the escapes of one run."""

    def __init__(self):
        self.token = secrets.token_hex(16)
        self.dir = tempfile.mkdtemp(prefix="sandbox_arena_")
        os.chmod(self.dir, 0o777)  # world-writable: only the sandbox's layers keep it out
        self.canary = os.path.join(self.dir, "canary.txt")
        Path(self.canary).write_text("canary " + self.token)
        os.chmod(self.canary, 0o666)
        self.secret_file = os.path.join(self.dir, "secret.txt")
        Path(self.secret_file).write_text("secret " + self.token)
        os.chmod(self.secret_file, 0o600)
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(16)
        self.tcp.setblocking(False)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.setblocking(False)
        self.unix_path = os.path.join(self.dir, "listener.sock")
        self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.unix.bind(self.unix_path)
        os.chmod(self.unix_path, 0o777)
        self.unix.listen(16)
        self.unix.setblocking(False)
        os.environ["SANDBOX_ARENA_SECRET"] = self.token
        self.signals: dict[int, int] = {}
        self._old_handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in WATCHED_SIGNALS:
                self._old_handlers[sig] = signal.signal(sig, self._count)
        self.snapshot = self._canary_state()
        self.started = time.time()
        self.values = {
            "arena": self.dir,
            "canary": self.canary,
            "secret_file": self.secret_file,
            "port": self.tcp.getsockname()[1],
            "udp_port": self.udp.getsockname()[1],
            "unix": self.unix_path,
            "ppid": os.getpid(),
            "parent_cwd": os.getcwd(),
        }
        self._n = 0
        self._lock = threading.Lock()

    def _count(self, signum, frame):
        self.signals[signum] = self.signals.get(signum, 0) + 1

    def _canary_state(self):
        st = os.stat(self.canary)
        return (Path(self.canary).read_bytes(), st.st_mtime_ns, st.st_mode, sorted(os.listdir(self.dir)))

    def code(self, template: str, wrapper: str = "{action}") -> tuple[str, str]:
        """The attack with its placeholders filled, then wrapped; returns (code, marker)."""
        with self._lock:
            self._n += 1
            marker = f"ESCAPED_{self.token[:8]}_{self._n}"
        values = dict(self.values, marker=marker)
        try:
            action = template.format(**values)
        except (KeyError, IndexError, ValueError, AttributeError):
            action = template  # a mutated template or a random program (with braces of its own): as it is
        return wrap(wrapper, action), marker

    def check(self, result, marker: str, *, timeout: float, memory_mb: int) -> list[str]:
        escapes = []
        for place in ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", self.dir, self.values["parent_cwd"], "/"):
            for name in (marker, marker + "\udcff"):
                try:
                    if os.path.lexists(os.path.join(place, name)):
                        escapes.append(f"file written: {place}/{marker}")
                except (ValueError, OSError):
                    pass
        state = self._canary_state()
        if state != self.snapshot:
            escapes.append("canary changed")
            self.snapshot = state
        for label, sock in (("tcp", self.tcp), ("unix", self.unix)):
            try:
                conn, _ = sock.accept()
                conn.close()
                escapes.append(f"network: {label} connection accepted")
            except (BlockingIOError, OSError):
                pass
        try:
            self.udp.recvfrom(64)
            escapes.append("network: udp datagram received")
        except (BlockingIOError, OSError):
            pass
        alive = leftover_processes(result)
        if alive:
            escapes.append(f"processes alive after return: {alive[:5]}")
        if result.seconds > timeout + SLACK_S:
            escapes.append(f"parent blocked {result.seconds:.2f} s (timeout {timeout} s)")
        if result.max_rss_mb is not None and result.max_rss_mb > memory_mb:  # None: killed before measured
            escapes.append(f"memory {result.max_rss_mb:.0f} MB > limit {memory_mb} MB")
        if self.token in result.stdout or self.token in result.stderr:
            escapes.append("secret leaked")
        if self.signals:
            escapes.append(f"parent signalled: {dict(self.signals)}")
            self.signals.clear()
        if os.path.exists(os.path.dirname(result.workdir)):
            escapes.append("sandbox directory left behind")
        return escapes

    def close(self) -> None:
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)
        for s in (self.tcp, self.udp, self.unix):
            s.close()
        os.environ.pop("SANDBOX_ARENA_SECRET", None)
        sandbox._remove_tree(self.dir)


def leftover_processes(result) -> list[int]:
    """Pids with the run's uid, or in its process group or session, still alive (zombies excluded)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
            fields = text[text.rindex(")") + 2 :].split()
            state, pgrp, session = fields[0], int(fields[2]), int(fields[3])
            uid = os.stat(f"/proc/{entry}").st_uid
        except (OSError, ValueError):
            continue
        if state in ("Z", "X"):
            continue
        if pgrp == result.pid or session == result.pid or (result.uid is not None and uid == result.uid):
            found.append(int(entry))
    return found


def files_of_sandbox_uids(roots=("/",)) -> list[str]:
    """Every file on the root filesystem owned by a sandbox uid (there should be none)."""
    lo, hi = sandbox.UID_BASE, sandbox.UID_BASE + sandbox.UID_SPAN
    found = []
    for top in roots:
        dev = os.stat(top).st_dev
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [
                d
                for d in dirnames
                if not os.path.islink(os.path.join(dirpath, d))
                and _same_dev(os.path.join(dirpath, d), dev)
                and os.path.join(dirpath, d) not in ("/proc", "/sys")
            ]
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                try:
                    uid = os.lstat(path).st_uid
                except OSError:
                    continue
                if lo <= uid < hi:
                    found.append(path)
    return found


def _same_dev(path: str, dev: int) -> bool:
    try:
        return os.lstat(path).st_dev == dev and stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


# --------------------------------------------------------------------------- running


def attack(
    items, *, timeout: float = 1.0, memory_mb: int = 128, workers: int = 2, audit_hook: bool = True, progress=None
):
    """Run every (name, template) in ``items``; returns a summary dict (tried, escapes, worst time, layers)."""
    arena = Arena()
    escapes, worst, seconds = [], 0.0, []
    layers: set[str] = set()
    errors = []

    def one(item):
        name, template, wrapper = item
        code, marker = arena.code(template, wrapper)
        try:
            r = sandbox.run(code, timeout=timeout, memory_mb=memory_mb, max_output=4096, audit_hook=audit_hook)
        except Exception as e:  # the runner itself failed: counts against it
            return name, code, None, [f"runner raised {type(e).__name__}: {e}"]
        return name, code, r, arena.check(r, marker, timeout=timeout, memory_mb=memory_mb)

    t0 = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for i, (name, code, r, found) in enumerate(pool.map(one, items), start=1):
                if r is not None:
                    worst = max(worst, r.seconds)
                    seconds.append(r.seconds)
                    layers.update(r.layers)
                if found:
                    escapes.append({"name": name, "code": code[:500], "escapes": found})
                if progress and i % progress == 0:
                    print(f"  {i}/{len(items)} tried, {len(escapes)} escapes, worst {worst:.2f} s", flush=True)
        stray = files_of_sandbox_uids() if os.geteuid() == 0 else []
        if stray:
            escapes.append(
                {"name": "filesystem scan", "code": "", "escapes": [f"files owned by sandbox uids: {stray[:10]}"]}
            )
    finally:
        arena.close()
    seconds.sort()
    return {
        "tried": len(items),
        "escapes": escapes,
        "n_escapes": len(escapes),
        "worst_seconds": round(worst, 3),
        "p50_seconds": round(seconds[len(seconds) // 2], 3) if seconds else None,
        "p95_seconds": round(seconds[int(len(seconds) * 0.95)], 3) if seconds else None,
        "total_seconds": round(time.perf_counter() - t0, 1),
        "layers": sorted(layers),
        "audit_hook": audit_hook,
        "timeout": timeout,
        "memory_mb": memory_mb,
        "errors": errors,
    }


#: Where ``--store`` writes the summary the chapter shows.
STORED_NAME = "sandbox_attacks.json"


KINDS = (
    "file written",
    "canary changed",
    "network",
    "processes alive after return",
    "parent signalled",
    "parent blocked",
    "memory",
    "secret leaked",
    "sandbox directory left behind",
    "runner raised",
    "files owned by sandbox uids",
)


def by_kind(escapes: list[dict]) -> dict[str, int]:
    """How many inputs had each kind of escape (one input can have several)."""
    counts: dict[str, int] = {}
    for e in escapes:
        kinds = {k for k in KINDS for text in e["escapes"] if text.startswith(k)}
        for k in kinds:
            counts[k] = counts.get(k, 0) + 1
    return dict(sorted(counts.items()))


def _brief(run: dict) -> dict:
    out = {k: v for k, v in run.items() if k != "escapes"}
    out["escapes"] = [dict(e, code=e["code"][:200]) for e in run["escapes"][:20]]
    out["by_kind"] = by_kind(run["escapes"])
    return out


def store(summary: dict, *, command: str, os_layers_alone: dict | None = None, recheck: dict | None = None) -> Path:
    """Write ``summary`` (and optionally a run with the audit hook off, and a later re-check run)
    to ``course_lib/zoo_data``, with the machine's fingerprint and the command; entered in the manifest.
    """
    from course_lib import fingerprint, paths

    record = {**_brief(summary), "command": command, "machine": fingerprint.machine()}
    if os_layers_alone is not None:
        record["os_layers_alone"] = _brief(os_layers_alone)
    if recheck is not None:
        record["recheck"] = _brief(recheck)
    path = paths.ZOO_DIR / STORED_NAME
    paths.atomic_write_bytes(path, (json.dumps(record, indent=1) + "\n").encode())
    paths.record_artefact(path, rebuild="python scripts/attack_sandbox.py --store")
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="inputs in the corpus (default 10000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--memory-mb", type=int, default=128)
    parser.add_argument("--no-hook", action="store_true", help="turn the audit hook off: attack the OS layers alone")
    parser.add_argument("--json", type=Path, help="write the summary here")
    parser.add_argument(
        "--store", action="store_true", help=f"also write course_lib/zoo_data/{STORED_NAME} (what chapter 09 shows)"
    )
    parser.add_argument(
        "--store-from",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="store earlier --json summaries instead of running: the full run, then optionally a --no-hook "
        "run and a re-check run",
    )
    args = parser.parse_args(argv)
    if args.store_from:
        runs = [json.loads(p.read_text()) for p in args.store_from]
        full = runs[0]
        command = full.get("command") or "python scripts/attack_sandbox.py"
        extra = {"os_layers_alone": runs[1] if len(runs) > 1 else None, "recheck": runs[2] if len(runs) > 2 else None}
        print(store(full, command=command, **extra))
        return 0
    items = corpus(args.n, args.seed)
    print(
        f"attacking the sandbox with {len(items)} inputs (seed {args.seed}, {args.workers} workers, "
        f"audit hook {'off' if args.no_hook else 'on'}); layers here: {', '.join(sandbox.layers())}",
        flush=True,
    )
    summary = attack(
        items,
        timeout=args.timeout,
        memory_mb=args.memory_mb,
        workers=args.workers,
        audit_hook=not args.no_hook,
        progress=max(1, len(items) // 20),
    )
    print(f"inputs tried: {summary['tried']}")
    print(f"escapes found: {summary['n_escapes']} {by_kind(summary['escapes']) or ''}")
    for e in summary["escapes"][:20]:
        print(f"  - {e['name']}: {e['escapes']}\n    {e['code'][:200]!r}")
    print(
        f"worst-case time: {summary['worst_seconds']} s (timeout {args.timeout} s); "
        f"p50 {summary['p50_seconds']} s, p95 {summary['p95_seconds']} s; total {summary['total_seconds']} s"
    )
    print(f"layers in force: {', '.join(summary['layers'])}")
    summary["command"] = "python scripts/attack_sandbox.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    if args.store:
        print(f"stored in {store(summary, command=summary['command'])}")
    return 1 if summary["n_escapes"] else 0


if __name__ == "__main__":
    sys.exit(main())
