"""A sandboxed Python runner for the code tool (chapter 09): :func:`run` a snippet, get what it printed.

A model that can call a code tool can write *any* code — including code that deletes
files, reads secrets, phones home, forks until the machine stops or prints forever. The
runner assumes the snippet is hostile and stacks independent layers, so one that fails or
is bypassed is not the only thing between the snippet and the machine. :func:`layers`
says which are in force here; every :class:`RunResult` lists the ones its run had.

Always (any Linux, any user):

* **a separate process** in its own session and process group, killed as a whole
  (``SIGKILL`` to the group) when the call returns, whatever happened;
* **a wall-clock timeout** enforced by the parent, which never blocks past it;
* **rlimits** (``rlimits``): CPU seconds, address space (``memory_mb``), file size,
  open files, processes (``RLIMIT_NPROC``), no core files;
* **an isolated interpreter**: ``python -I -S -B`` (no user site, no ``site``, no
  ``PYTHON*`` variables, no bytecode written) with an **empty environment**, so nothing of
  the parent's environment (tokens, paths) is there to read;
* **a fresh temporary directory** as the working directory, removed afterwards;
* **output truncated** to ``max_output`` bytes per stream (the process is killed when it
  writes more), decoded as UTF-8 with invalid bytes replaced;
* **seccomp** (``seccomp``, x86-64 and arm64; unprivileged, after ``no_new_privs``): a
  system-call filter that refuses ``socket(2)`` of every family (so no connection at all —
  a world-writable unix socket on disk would otherwise cross any network namespace), new
  namespaces, ``ptrace``, ``process_vm_*``, ``io_uring``, ``bpf``, ``userfaultfd``,
  ``perf_event_open``, keyrings, ``mount`` and ``chroot``, and the 32-bit system-call ABIs;
* **an audit hook** (``audit-hook``, :pep:`578`) installed before the snippet runs: it
  refuses sockets, ``subprocess``/``os.system``/``exec``/``spawn``/``fork``, signals
  (``os.kill``), ``ctypes``, shared memory and database modules that open files in C, and
  writes, renames, deletions and permission changes outside the working directory (paths
  resolved by its own ``realpath``, built from captured C functions so the snippet cannot
  patch it; a ``dir_fd`` argument, or opening a directory outside, is refused since a
  directory fd makes any relative path escape). It is a *tripwire*, not a wall: it lives
  inside the attacked process, so a bug in CPython or an event it does not see can get past it.

When the parent runs as root (this course's containers; a CI runner usually does not):

* **an unprivileged uid** (``uid``): the snippet runs as a fresh uid/gid (one per run, no
  supplementary groups, ``no_new_privs``), so it cannot read files only root can read
  (``/root``, ``/proc/<parent>/environ``), cannot signal or trace the parent, and
  ``RLIMIT_NPROC`` — which root ignores — binds. The interpreter must be readable by that
  uid, so a world-readable Python (``/usr/bin/python3`` when the course's own is under
  ``/root``) is used; :func:`interpreter` names it.
* **namespaces** (``pidns``, ``netns``, ``mountns``, ``ipcns``): a new PID namespace whose
  init is the runner's own small process — when it exits the kernel kills everything left
  inside, so nothing outlives the call; a new network namespace with no interface up
  (not even loopback), so no connection can be made; a private mount namespace in which
  every mount is re-mounted read-only and ``nosuid`` except a bind mount of the working
  directory, with a fresh ``/proc`` that shows only the sandbox's processes.

What it does **not** protect against (the threat model's edges):

* kernel bugs — every layer is the same kernel; a local privilege escalation escapes all
  of them (containers, gVisor or a VM are the answer to that);
* reading what the sandbox uid may read: world-readable files (the course's code, the
  corpus, ``/etc/passwd``) stay readable; secrets belong in files only their owner reads;
* resource exhaustion the rlimits do not cover: disk space inside the working directory
  up to ``file_mb`` per file (no total quota), CPU contention while it runs (it competes
  for the cores until the timeout), kernel memory (page tables, sockets it cannot open);
* without root: no uid change, no namespaces — a snippet that gets past the audit hook
  runs as the parent's user, with that user's files and its network;
* covert channels and timing (it can measure time; it cannot send anything out).

Run the attack corpus with ``python scripts/attack_sandbox.py`` (≥ 10,000 inputs, hand-written
escapes plus generated ones); ``tests/test_sandbox.py`` runs a fast subset.
"""

from __future__ import annotations

import itertools
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path

from course_lib.checks import check_bool, check_float, check_int, check_type

#: Defaults of :func:`run`.
TIMEOUT = 2.0
MEMORY_MB = 256
MAX_OUTPUT = 10_000
FILE_MB = 8
OPEN_FILES = 64
PROCESSES = 16
#: How long the runner waits, after killing a namespace's init, for the kernel to end every
#: process in it (it waits longer only for processes stuck in the kernel; then it kills its own).
TEARDOWN_S = 30.0
#: The longest snippet accepted, in characters.
MAX_CODE_CHARS = 100_000
#: First uid of the per-run uids (when the parent is root); far above any real account.
UID_BASE = 2_100_000_000
UID_SPAN = 1_000_000

_uid_counter = itertools.count()

# The program the sandboxed interpreter runs (``python -I -S -B -u -c PRELUDE args``): set up
# the namespaces, mounts, rlimits, uid and audit hook, then run the snippet. One function, so
# nothing of it stays reachable from the snippet's globals.
PRELUDE = r"""
def _sandbox(argv):
    import os, resource, sys
    work, code_path, status_fd = argv[0], argv[1], int(argv[2])
    cpu, mem, fsize, nofile, nproc, uid, gid = (int(a) for a in argv[3:10])
    flags = argv[10]
    with open(code_path, "rb") as f:
        source = f.read()
    layers = ["rlimits", "process-group", "empty-env", "isolated-interpreter", "temp-cwd"]

    def report(text):
        try:
            os.write(status_fd, text.encode())
        except OSError:
            pass

    if "n" in flags:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
        NS, NET, PID, IPC, UTS = 0x00020000, 0x40000000, 0x20000000, 0x08000000, 0x04000000
        MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
        MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
        KEEP = {"nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": 1024, "nodiratime": 2048,
                "relatime": 1 << 21, "strictatime": 1 << 24}

        def mount(src, target, fstype, fl):
            enc = lambda s: None if s is None else s.encode()
            if libc.mount(enc(src), enc(target), enc(fstype), fl, None) != 0:
                raise OSError(ctypes.get_errno(), "mount " + str(target))

        if libc.unshare(NS | NET | PID | IPC | UTS) == 0:
            # Never touch a shared mount: everything below is private to this namespace.
            mount(None, "/", None, MS_REC | MS_PRIVATE)
            pid = os.fork()
            if pid:  # outside the new PID namespace: wait for its init, then mirror its status
                report("init %d\n" % pid)  # the parent kills this pid to end the whole namespace
                os.close(status_fd)
                while True:
                    _, status = os.waitpid(pid, 0)
                    if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                        break
                os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
            # PID 1 of the namespace
            mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            mount(work, work, None, MS_BIND)
            mount(None, work, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV)
            with open("/proc/self/mountinfo") as f:
                infos = [line.split(" ") for line in f.read().splitlines()]
            for info in infos:
                target = info[4].encode().decode("unicode_escape")
                if target == work or target == "/proc" or target.startswith("/proc/"):
                    continue
                fl = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID
                for opt in info[5].split(","):
                    fl |= KEEP.get(opt, 0)
                try:
                    mount(None, target, None, fl)
                except OSError:
                    if not target.startswith("/sys"):
                        raise
            os.chdir(work)  # through the bind mount (the old cwd is on the now read-only mount)
            layers += ["pidns", "netns", "mountns", "ipcns"]
            child = os.fork()
            if child:  # init: reap everything; leave (killing the namespace) when the snippet's process ends
                while True:
                    try:
                        done, status, usage = os.wait4(-1, 0)
                    except ChildProcessError:
                        os._exit(0)
                    if done == child and (os.WIFEXITED(status) or os.WIFSIGNALED(status)):
                        report("rss %d\nstatus %d\n" % (usage.ru_maxrss, status))  # KiB
                        os._exit(0)
        del libc, ctypes, mount

    # The snippet runs in a child forked *after* exec, and its parent reports the child's peak
    # memory. The exec'd process itself inherits the runner's high-water RSS (Linux folds the
    # old address space's peak into ru_maxrss at exec), so a runner inside a 1 GB notebook
    # kernel would read 1 GB for ``print(1)``; a fork of this small interpreter starts small.
    # (Inside a PID namespace, its init above already runs the snippet in such a child.)
    if "pidns" not in layers:
        child = os.fork()
        if child:
            while True:
                done, status, usage = os.wait4(child, 0)
                if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                    break
            report("rss %d\nstatus %d\n" % (usage.ru_maxrss, status))  # KiB
            os._exit(0)

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    if mem > 0:
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    if uid >= 0:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        layers.append("uid")
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    if "s" in flags and _seccomp():
        layers.append("seccomp")
    if "a" in flags:
        layers.append("audit-hook")
    report("layers " + ",".join(layers) + "\n")
    os.close(status_fd)
    if "a" in flags:
        _install_hook(work)
    del argv, f
    code = compile(source, "<sandbox>", "exec")
    del source
    sys.argv = ["<sandbox>"]
    g = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(code, g)
    except SystemExit:
        raise
    except BaseException as e:  # the snippet's traceback, without the runner's frames
        import traceback
        traceback.print_exception(type(e), e, e.__traceback__.tb_next)
        raise SystemExit(1) from None


def _seccomp():
    # A seccomp-BPF filter (no_new_privs first): socket(2) refused, so no connection of any family
    # (a filesystem unix socket crosses network namespaces); no new namespaces (unshare, setns,
    # clone with CLONE_NEW*; clone3 answers ENOSYS so libc falls back to clone); no ptrace,
    # process_vm_*, io_uring, bpf, userfaultfd, perf_event_open, keyrings, mount, chroot; other
    # system-call ABIs (i386, x32) refused. Returns False where the architecture is not known.
    import ctypes, os
    machine = os.uname().machine
    if machine == "x86_64":
        arch, clone, clone3, deny = 0xC000003E, 56, 435, (41, 101, 425, 426, 427, 321, 323, 298, 250, 248, 249,
                                                          272, 308, 165, 166, 155, 161, 310, 311)
    elif machine == "aarch64":
        arch, clone, clone3, deny = 0xC00000B7, 220, 435, (198, 117, 425, 426, 427, 280, 282, 241, 219, 217, 218,
                                                           97, 268, 40, 39, 41, 51, 270, 271)
    else:
        return False
    LD, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
    ALLOW, EPERM, ENOSYS = 0x7FFF0000, 0x00050001, 0x00050026
    prog = [(LD, 0, 0, 4), (JEQ, 1, 0, arch), (RET, 0, 0, EPERM), (LD, 0, 0, 0)]
    conds = ([(JGE, 0x40000000)] if machine == "x86_64" else []) + [(JEQ, nr) for nr in deny]
    n_cond = len(conds)
    # layout: prog(4) + conds + [jeq clone3 -> enosys] + [jeq clone] + [ld args0] + [jset ns] + ALLOW + DENY + ENOSYS
    base = len(prog)
    deny_at = base + n_cond + 4 + 1
    allow_at = deny_at - 1
    enosys_at = deny_at + 1
    for i, (op, k) in enumerate(conds):
        at = base + i
        prog.append((op, deny_at - at - 1, 0, k))
    at = base + n_cond
    prog.append((JEQ, enosys_at - at - 1, 0, clone3))
    prog.append((JEQ, 0, allow_at - (at + 1) - 1, clone))
    prog.append((LD, 0, 0, 16))
    prog.append((JSET, deny_at - (at + 3) - 1, 0, 0x7E020000))
    prog += [(RET, 0, 0, ALLOW), (RET, 0, 0, EPERM), (RET, 0, 0, ENOSYS)]

    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]

    filters = (Filter * len(prog))(*[Filter(*ins) for ins in prog])
    fprog = Prog(len(prog), filters)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        return False
    return libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER


def _install_hook(work):
    # Everything the hook uses is captured here as a C function or an immutable value, so the
    # snippet cannot change what it checks by patching a module (os.path.realpath, for one,
    # calls module globals it could replace).
    import os, sys

    deny = frozenset((
        "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill", "os.killpg",
        "subprocess.Popen", "pty.spawn", "os.startfile", "signal.pthread_kill", "sys.setprofile", "sys.settrace",
        "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys._current_frames", "os.add_dll_directory",
        "sys.remote_exec", "os.setns", "os.unshare", "socket.sethostname", "resource.setrlimit", "resource.prlimit",
        "sqlite3.connect", "sqlite3.connect/handle",
    ))
    deny_prefix = ("socket.", "ctypes.", "_ctypes.", "winreg.", "msvcrt.", "pty.")
    deny_import = frozenset(("ctypes", "_ctypes", "_posixsubprocess", "_socket", "socket", "_multiprocessing",
                             "multiprocessing", "ssl", "_ssl", "_testcapi", "_testinternalcapi", "_xxsubinterpreters",
                             "_posixshmem", "_sqlite3", "_gdbm", "_dbm", "_curses", "readline", "_tkinter"))
    # path events: which arguments are paths, and which are dir_fd (an fd makes a relative path escape)
    path_events = {
        "os.remove": ((0,), (1,)), "os.rename": ((0, 1), (2, 3)), "os.rmdir": ((0,), (1,)),
        "os.mkdir": ((0,), (2,)), "os.symlink": ((0, 1), (2,)), "os.link": ((0, 1), (2, 3)),
        "os.chmod": ((0,), (2,)), "os.chown": ((0,), (3,)), "os.truncate": ((0,), ()), "os.utime": ((0,), (3,)),
        "os.chflags": ((0,), ()), "os.lchflags": ((0,), ()), "os.mkfifo": ((0,), (2,)), "os.mknod": ((0,), (3,)),
        "os.setxattr": ((0,), ()), "os.removexattr": ((0,), ()), "shutil.rmtree": ((0,), ()),
        "shutil.copyfile": ((0, 1), ()), "shutil.move": ((0, 1), ()), "shutil.chown": ((0,), ()),
    }
    WRITE = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    lstat, stat, readlink, getcwd = os.lstat, os.stat, os.readlink, os.getcwd
    root = work.rstrip("/") + "/"
    Refused = PermissionError

    def resolve(p):
        # like os.path.realpath: absolute, '.'/'..' folded, every symlink followed
        if p[:1] != "/":
            p = getcwd() + "/" + p
        todo, parts, links = p.split("/")[::-1], [], 0
        while todo:
            c = todo.pop()
            if c == "" or c == ".":
                continue
            if c == "..":
                if parts:
                    parts.pop()
                continue
            cur = "/" + "/".join(parts + [c])
            try:
                mode = lstat(cur).st_mode
            except OSError:
                parts.append(c)
                continue
            if mode & 0o170000 == 0o120000:
                links += 1
                if links > 40:
                    raise Refused("sandbox: too many symbolic links")
                target = readlink(cur)
                if target[:1] == "/":
                    parts = []
                todo.extend(target.split("/")[::-1])
            else:
                parts.append(c)
        return "/" + "/".join(parts)

    def inside(p):
        t = type(p)
        if t is bytes:
            p = p.decode("utf-8", "surrogateescape")
        elif t is not str:
            return False  # an fd, or a path-like whose __fspath__ could answer differently the next time
        try:
            p = resolve(p)
        except (OSError, ValueError):
            return False
        return p == work or p[: len(root)] == root

    def hook(event, args):
        if event == "open":
            path, mode, fl = args
            if type(path) is int:
                return  # wraps an fd already open: nothing new is opened
            writes = (mode is not None and any(c in mode for c in "wax+")) or (type(fl) is int and fl & WRITE)
            if writes and not inside(path):
                raise Refused("sandbox: writing outside the working directory is not allowed (write with a str path)")
            if mode is None and not inside(path):  # os.open: no directory fd from outside (a dir_fd escapes)
                try:
                    is_dir = stat(path).st_mode & 0o170000 == 0o040000
                except (OSError, TypeError, ValueError):
                    is_dir = False
                if is_dir:
                    raise Refused("sandbox: opening a directory outside the working directory is not allowed")
            return
        if event in deny or event.startswith(deny_prefix):
            raise Refused("sandbox: %s is not allowed" % event)
        if event == "import":
            if args[0] in deny_import:
                raise Refused("sandbox: import %s is not allowed" % args[0])
            return
        spec = path_events.get(event)
        if spec is not None:
            paths, dir_fds = spec
            for i in dir_fds:
                if i < len(args) and args[i] not in (None, -1, -100):
                    raise Refused("sandbox: %s with dir_fd is not allowed" % event)
            for i in paths:
                if i < len(args) and args[i] is not None and not inside(args[i]):
                    raise Refused("sandbox: %s outside the working directory is not allowed" % event)
            return
        if event == "object.__setattr__" and len(args) > 1 and args[1] in ("__code__", "__closure__", "__globals__"):
            raise Refused("sandbox: replacing a function's code is not allowed")

    for name in ("ctypes", "_ctypes", "ctypes._endian"):
        sys.modules.pop(name, None)
    sys.addaudithook(hook)


import sys as _s
_argv = _s.argv[1:]
del _s
_sandbox(_argv)
"""


class SandboxError(RuntimeError):
    """The runner itself failed (not the snippet): e.g. the interpreter could not start."""


@dataclass
class RunResult:
    """What :func:`run` returns.

    ``stdout``/``stderr``: decoded text (invalid UTF-8 replaced), at most ``max_output``
    bytes each; ``returncode``: the snippet's exit status, ``-N`` when killed by signal N;
    ``timed_out``: the wall-clock limit ended it; ``killed``: the runner killed it (timeout or
    too much output) or the kernel did (CPU limit); ``seconds``: wall time from start to
    clean-up done; ``truncated``: output was cut; ``layers``: the protections in force for
    this run; ``max_rss_mb``: peak resident memory of the snippet (None when it was killed
    before it could be measured); ``uid``: the
    uid it ran as (None when unchanged); ``pid``: the runner's process id (its group id);
    ``cpu_seconds``: CPU time of the runner and the snippet (user + system; unlike the wall
    time, it does not grow with other work on the machine).
    """

    stdout: str
    stderr: str
    returncode: int | None
    timed_out: bool
    killed: bool
    seconds: float
    truncated: bool
    layers: tuple[str, ...]
    max_rss_mb: float | None = None
    uid: int | None = None
    pid: int = 0
    workdir: str = field(default="", repr=False)
    cpu_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Exited with status 0, not timed out, not killed."""
        return self.returncode == 0 and not self.timed_out and not self.killed


def _world_usable(path: str) -> bool:
    """Every directory on the way to ``path`` is searchable by others and ``path`` is readable by others."""
    p = Path(path)
    try:
        for parent in list(p.parents)[:-1] + [Path("/")]:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
        return bool(os.stat(p).st_mode & stat.S_IROTH)
    except OSError:
        return False


@cache
def interpreter(drop_privileges: bool | None = None) -> str:
    """The Python the snippets run in: this one, or (when running as root and this one is not
    readable by an unprivileged uid, e.g. under ``/root``) a world-readable one such as
    ``/usr/bin/python3``. Raises :class:`SandboxError` when there is none."""
    if drop_privileges is None:
        drop_privileges = os.geteuid() == 0
    candidates = [os.path.realpath(getattr(sys, "_base_executable", sys.executable)), os.path.realpath(sys.executable)]
    if not drop_privileges:
        return candidates[0]
    stdlib = sysconfig.get_paths()["stdlib"]
    for exe in candidates:
        if _world_usable(exe) and _world_usable(os.path.join(stdlib, "os.py")):
            return exe
    for exe in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(exe) and _world_usable(os.path.realpath(exe)):
            return os.path.realpath(exe)
    raise SandboxError("no Python readable by an unprivileged uid was found (run as a normal user instead)")


def check_options(
    *,
    timeout: float = TIMEOUT,
    memory_mb: int = MEMORY_MB,
    max_output: int = MAX_OUTPUT,
    file_mb: int = FILE_MB,
    open_files: int = OPEN_FILES,
    processes: int = PROCESSES,
    audit_hook: bool = True,
    seccomp: bool = True,
    namespaces: bool | None = None,
    drop_privileges: bool | None = None,
) -> dict:
    """Validate :func:`run`'s options (each named in its error); returns them as a dict."""
    return {
        "timeout": check_float("timeout", timeout, min=0.01, max=600),
        "memory_mb": check_int("memory_mb", memory_mb, min=32, max=65536),
        "max_output": check_int("max_output", max_output, min=1, max=100_000_000),
        "file_mb": check_int("file_mb", file_mb, min=1, max=4096),
        "open_files": check_int("open_files", open_files, min=16, max=4096),
        "processes": check_int("processes", processes, min=1, max=4096),
        "audit_hook": check_bool("audit_hook", audit_hook),
        "seccomp": check_bool("seccomp", seccomp),
        "namespaces": check_bool("namespaces", namespaces, allow_none=True),
        "drop_privileges": check_bool("drop_privileges", drop_privileges, allow_none=True),
    }


def _new_uid() -> int:
    return UID_BASE + (os.getpid() * 4096 + next(_uid_counter)) % UID_SPAN


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of ``uid``: a forked helper takes the uid and calls ``kill(-1, SIGKILL)``.

    Used when the uid layer is in force but the PID namespace is not (the namespace kills
    its processes by itself).
    """
    pid = os.fork()
    if pid == 0:  # pragma: no cover (child)
        try:
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _signal(pid: int, sig: int) -> None:
    """``kill(pid, sig)`` (a negative pid: the process group), ignoring a process already gone."""
    try:
        if pid < 0:
            os.killpg(-pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait(pid: int, timeout: float | None):
    """``(status, rusage)`` of the child ``pid`` once it exits; ``(None, None)`` after ``timeout`` seconds."""
    if timeout is None:
        _, status, rusage = os.wait4(pid, 0)
        return status, rusage
    end = time.perf_counter() + timeout
    while True:
        done, status, rusage = os.wait4(pid, os.WNOHANG)
        if done:
            return status, rusage
        if time.perf_counter() > end:
            return None, None
        time.sleep(0.001)


def _wait_group_gone(pgid: int, timeout: float) -> None:
    """Wait until no process is left in the process group (after SIGKILL they are only exiting)."""
    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.002)


def _drain(fd: int) -> str:
    """What can be read from ``fd`` now, without blocking."""
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except (BlockingIOError, OSError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def _remove_tree(path: str) -> None:
    def unlock(fn, p, _exc):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            fn(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=unlock)


def run(
    code: str,
    *,
    timeout: float = TIMEOUT,
    memory_mb: int = MEMORY_MB,
    max_output: int = MAX_OUTPUT,
    file_mb: int = FILE_MB,
    open_files: int = OPEN_FILES,
    processes: int = PROCESSES,
    audit_hook: bool = True,
    seccomp: bool = True,
    namespaces: bool | None = None,
    drop_privileges: bool | None = None,
) -> RunResult:
    """Run Python ``code`` in a fresh, limited process; return what it printed (see the module docstring).

    ``timeout``: wall-clock seconds (the CPU limit is ``ceil(timeout)`` seconds);
    ``memory_mb``: address-space limit; ``max_output``: bytes kept per stream (more kills
    the process); ``file_mb``: largest file it may write; ``open_files``, ``processes``:
    rlimits. ``audit_hook=False`` leaves only the operating-system layers (the tests use it
    to check that those hold alone). ``namespaces`` / ``drop_privileges``: None uses them
    when the machine allows (root), False turns them off.
    """
    check_type("code", code, str)
    if len(code) > MAX_CODE_CHARS:
        raise ValueError(f"code must be at most {MAX_CODE_CHARS} characters, got {len(code)}")
    check_options(
        timeout=timeout,
        memory_mb=memory_mb,
        max_output=max_output,
        file_mb=file_mb,
        open_files=open_files,
        processes=processes,
        audit_hook=audit_hook,
        seccomp=seccomp,
        namespaces=namespaces,
        drop_privileges=drop_privileges,
    )
    root = os.geteuid() == 0
    drop = root if drop_privileges is None else (drop_privileges and root)
    use_ns = root if namespaces is None else (namespaces and root)
    uid = _new_uid() if drop else -1
    exe = interpreter(drop)

    t0 = time.perf_counter()
    base = os.path.realpath(tempfile.mkdtemp(prefix="course_sandbox_"))
    os.chmod(base, 0o711)
    work = os.path.join(base, "work")
    os.mkdir(work, 0o700)
    if drop:
        os.chown(work, uid, uid)
    code_path = os.path.join(base, "main.py")
    with open(code_path, "wb") as f:
        f.write(code.encode("utf-8", "surrogatepass"))
    os.chmod(code_path, 0o600)
    status_r, status_w = os.pipe()
    flags = ("n" if use_ns else "") + ("a" if audit_hook else "") + ("s" if seccomp else "")
    args = [
        exe,
        "-I",
        "-S",
        "-B",
        "-u",
        "-X",
        "utf8",
        "-c",
        PRELUDE,
        work,
        code_path,
        str(status_w),
        str(max(1, int(-(-timeout // 1)))),
        str(memory_mb << 20),
        str(file_mb << 20),
        str(open_files),
        str(processes),
        str(uid),
        str(uid),
        flags,
    ]
    try:
        proc = subprocess.Popen(
            args,
            cwd=work,
            env={},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(status_w,),
            start_new_session=True,
            close_fds=True,
        )
    except OSError as e:
        os.close(status_r)
        os.close(status_w)
        _remove_tree(base)
        raise SandboxError(f"could not start the sandbox interpreter {exe}: {e}") from e
    os.close(status_w)
    pid = proc.pid
    fd_out, fd_err = proc.stdout.fileno(), proc.stderr.fileno()
    out = {fd_out: bytearray(), fd_err: bytearray()}
    sel = selectors.DefaultSelector()
    for fd in out:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    status, rusage, truncated, killed, timed_out = None, None, False, False, False
    deadline = t0 + timeout
    exited_at = None
    try:
        while True:
            now = time.perf_counter()
            if status is None:
                done, st, ru = os.wait4(pid, os.WNOHANG)
                if done:
                    status, rusage, exited_at = st, ru, now
            if status is not None and (not sel.get_map() or now - exited_at > 0.05):
                break  # exited, and its output is read (or a leftover holds the pipe: killed below)
            if now >= deadline:
                timed_out = killed = True
                break
            wait = deadline - now
            if not sel.get_map():
                wait = min(wait, 0.002)
            elif status is not None:
                wait = min(wait, 0.01)
            else:
                wait = min(wait, 0.05)
            for key, _ in sel.select(wait):
                try:
                    chunk = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                buf = out[key.fd]
                room = max_output - len(buf)
                buf += chunk[:room]
                if len(chunk) > room:
                    truncated = killed = True
            if truncated:
                break
    finally:
        report = _drain(status_r)
        if status is None:  # still running: end it
            init = [int(line[5:]) for line in report.splitlines() if line.startswith("init ")]
            if init:  # killing the namespace's init kills everything in it; the runner's process then exits
                _signal(init[0], signal.SIGKILL)
                status, rusage = _wait(pid, TEARDOWN_S)
            if status is None:
                _signal(-pid, signal.SIGKILL)
                status, rusage = _wait(pid, None)
        _signal(-pid, signal.SIGKILL)  # anything left in the process group
        report += _drain(status_r)
        os.close(status_r)
        proc.returncode = os.waitstatus_to_exitcode(status)
        sel.close()
        proc.stdout.close()
        proc.stderr.close()
        layers = ()
        inner_status = None
        inner_rss_kib = None
        for line in report.splitlines():
            if line.startswith("layers "):
                layers = tuple(line[7:].split(","))
            elif line.startswith("status "):
                inner_status = int(line[7:])
            elif line.startswith("rss "):
                inner_rss_kib = int(line[4:])
        if "pidns" not in layers:
            if drop:
                _kill_uid(uid)
            _wait_group_gone(pid, 2.0)
        _remove_tree(base)
    if inner_status is not None:
        returncode = os.waitstatus_to_exitcode(inner_status)
    elif killed:  # ended by the runner (its namespace's init was killed, or its process group)
        returncode = -signal.SIGKILL
    else:
        returncode = proc.returncode
    if returncode is not None and returncode < 0 and -returncode in (signal.SIGKILL, signal.SIGXCPU):
        killed = True
    return RunResult(
        stdout=bytes(out[fd_out]).decode("utf-8", "replace"),
        stderr=bytes(out[fd_err]).decode("utf-8", "replace"),
        returncode=returncode,
        timed_out=timed_out,
        killed=killed,
        seconds=time.perf_counter() - t0,
        truncated=truncated,
        layers=layers,
        max_rss_mb=_peak_mb(inner_rss_kib),
        uid=uid if drop else None,
        pid=pid,
        workdir=work,
        cpu_seconds=(rusage.ru_utime + rusage.ru_stime) if rusage is not None else 0.0,
    )


def _peak_mb(inner_rss_kib: int | None) -> float | None:
    """The snippet's peak resident memory in MiB, as its parent inside the sandbox measured it.

    ``None`` when the snippet was killed before that parent could report (a timeout, the
    namespace's init killed): the runner's own ``wait4`` figure would include the runner's
    high-water RSS inherited at exec, a number about the runner, not the snippet. The
    address-space rlimit bounds every process of the snippet either way.
    """
    return inner_rss_kib / 1024 if inner_rss_kib is not None else None


@lru_cache(maxsize=1)
def layers() -> tuple[str, ...]:
    """The protections in force on this machine for a default :func:`run` (probed once by running ``pass``)."""
    r = run("pass", timeout=10)
    if r.returncode != 0:
        raise SandboxError(f"the sandbox could not run 'pass' here: {r.stderr.strip()[-500:]}")
    return r.layers
