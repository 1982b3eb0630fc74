"""Run untrusted generated Python against tests so that it can neither hurt the evaluator nor fake a pass.

Threat model: the code is hostile. It must not signal, kill or outlive the evaluator, reach any socket,
read the user's files, write outside its own scratch space, exhaust the machine, or produce a passing
verdict other than by passing the tests.

Isolation (mode "namespaces", the normal case on Linux): every sandbox starts from a small trusted launcher
(`python -I -S`, the code in `_CHILD` below) that enters new mount, PID, network, IPC and UTS namespaces
(plus a user namespace when the evaluator is not root) and forks an init (PID 1 of the new PID namespace;
it dies with the launcher, and when it dies the kernel kills everything in the namespace, `setsid`
escapees included). The init builds a fresh root: a tmpfs holding read-only binds of /usr, /lib*, /bin,
the Python installation and its site-packages, a few /dev nodes, a /proc of the new PID namespace and,
as the only writable place, a size-limited private tmpfs `/sandbox` (also /tmp, HOME and the working
directory); nothing else of the host (no /etc, /work, /home, /root, host /tmp, sockets). The untrusted
process is then forked without capabilities, with no_new_privs, in a session of its own, under rlimits on
address space, CPU time, file size, core dumps and processes. When the evaluator is root the code runs
as a host uid of its own (the kernel does not enforce RLIMIT_NPROC for root); as a normal user the
process count is per user namespace; either way parallel sandboxes do not share the budget. Its parent
is the init, so `os.getppid()` is 1 and `kill(-1)` / `killpg(0)` reach only the sandbox; the network
namespace has only a down loopback, which also scopes abstract AF_UNIX sockets.

Verdicts are decided where the untrusted code cannot reach them. Function tests (MBPP `test_list`, HumanEval
`check(candidate)`) run in a second, separate sandbox (its own PID namespace, root and uid; both are forked
from one launcher): the trusted test process. The solution's top-level callables are proxies there that call
into the solution's sandbox over a pair of pipes; arguments, return values and exceptions cross as plain
data in a strict tagged binary encoding (`encode` / `decode` below; None, bool, int, float incl. inf/nan,
complex, str, bytes, list, tuple, dict, set, frozenset; size and depth limited) -- never pickle or eval, so
no object of the solution (an `__eq__` that always returns True, say) ever reaches the test. Subclasses of
plain types (Counter, OrderedDict, defaultdict, namedtuple, IntEnum, numpy.float64) and numpy scalars cross
as their plain value. Any other return value (a generator, map, range, deque, numpy array, an instance of
the solution's own class) fails that test, and so does a test that passes a callable or an object to the
solution (e.g. MBPP's `max_chain_length([Pair(5, 24), ...])`); mutated list / dict / set arguments are
copied back. Exceptions of builtin types are re-raised in the test with their type; exits, crashes and
protocol garbage raise an exception that tests cannot catch with `except Exception`. The solution's names
never replace the tests' builtins, and its imported modules are visible to the tests only under their own
names. The test process writes "<index> <0|1>" lines to its own stdout, which only the evaluator holds; a
dead or hung solution fails the remaining tests. Stdio tests follow judges' rules and are decided by the
evaluator: a case passes iff the process exits with status 0 within the time limit and its
whitespace-normalised stdout equals the whitespace-normalised expected output.

Fallback (mode "rlimits-only", where the namespaces cannot be created): the same processes and rlimits
(no process limit), the launcher in a session of its own and killed by process group, the working
directory a private temporary directory. This stops accidents (loops, memory, exits) but NOT a deliberate
attack: the code runs as the evaluator's user, can read and write the user's files, signal processes and,
through /proc, forge verdicts. `isolation()` reports the mode; a warning is logged once per process.
"""
import logging
import marshal
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 3.0  # user-code wall time per job (function) or per case (stdio)
STARTUP_SLACK_S = 1.0  # added to the wall limit for interpreter start-up, so slow starts are not timeouts
DEFAULT_MEMORY_MB = 1024  # address-space limit per process
DEFAULT_MAX_OUTPUT_BYTES = 8 << 20  # per written file, stdout included (RLIMIT_FSIZE)
# Processes and threads of one sandbox, its first process included (RLIMIT_NPROC). Without cgroups memory is
# limited per process, so one sandbox can hold up to DEFAULT_MAX_PROCESSES x memory_mb (+ SCRATCH_MB).
DEFAULT_MAX_PROCESSES = 16
SCRATCH_MB = 64  # the private writable tmpfs of one sandbox
SANDBOX_DIR = "/sandbox"  # its path inside the sandbox
NAMESPACES, RLIMITS_ONLY = "namespaces", "rlimits-only"

# The sandboxed side: launcher, solution server, test runner and the plain-data codec. Compiled once per
# evaluator process and sent, marshalled, with each job to `python -I -S -c _BOOTSTRAP <job fd>`; only
# builtin modules are imported (fast start). Executed with another __name__ (tests), it only defines functions.
_CHILD = r'''
import builtins, os, resource, struct, sys

SETUP_FAILED = 121
UID_BASE = 1_500_000_000  # + the launcher's pid: the host uid sandboxed code runs as when the evaluator is root
MAX_MESSAGE = 64 << 20
MAX_DEPTH = 100
MAX_NODES = 1 << 20
MAX_GLOBAL_BYTES = 1 << 20  # larger plain-data globals of the solution are not shown to the tests
_U32, _F64 = struct.Struct("<I"), struct.Struct("<d")
_SEQUENCES = {list: b"l", tuple: b"t", set: b"S", frozenset: b"Z"}
_SEQUENCE_OF_TAG = {b"l": list, b"t": tuple, b"S": set, b"Z": frozenset}
_PLAIN_TYPES = (int, float, complex, str, bytes, list, tuple, dict, set, frozenset)


# ------------------------------------------------------------------------------------------ plain-data codec
class CodecError(Exception):
    pass


def encode(value):
    out = []
    _encode(value, out, 0)
    return b"".join(out)


def _encode(value, out, depth):
    if depth > MAX_DEPTH:
        raise CodecError("nested too deeply")
    kind = type(value)
    if value is None:
        out.append(b"N")
    elif kind is bool:
        out.append(b"T" if value else b"F")
    elif kind is int:
        raw = value.to_bytes(value.bit_length() // 8 + 1, "little", signed=True)
        out.append(b"i" + _U32.pack(len(raw)) + raw)
    elif kind is float:
        out.append(b"f" + _F64.pack(value))
    elif kind is complex:
        out.append(b"c" + _F64.pack(value.real) + _F64.pack(value.imag))
    elif kind is str:
        raw = value.encode("utf-8", "surrogatepass")
        out.append(b"s" + _U32.pack(len(raw)) + raw)
    elif kind is bytes:
        out.append(b"b" + _U32.pack(len(value)) + value)
    elif kind in _SEQUENCES:
        out.append(_SEQUENCES[kind] + _U32.pack(len(value)))
        for item in value:
            _encode(item, out, depth + 1)
    elif kind is dict:
        out.append(b"d" + _U32.pack(len(value)))
        for key, item in value.items():
            _encode(key, out, depth + 1)
            _encode(item, out, depth + 1)
    elif kind.__module__ == "numpy" and getattr(value, "ndim", None) == 0:  # numpy scalars: their value
        _encode(value.item(), out, depth)
    else:
        # Counter, OrderedDict, namedtuple, IntEnum, numpy.float64...: their plain value (what `==` compares
        # against a plain expected value anyway); whatever such a conversion runs, it runs here.
        plain = next((base for base in kind.__mro__[1:] if base in _PLAIN_TYPES), None)
        if plain is None:
            raise CodecError(f"a {kind.__name__} is not plain data")
        _encode(plain(value), out, depth + 1)


def decode(data):
    """bytes -> value built only of builtin plain types; CodecError on anything malformed or too big."""
    budget = [MAX_NODES]
    try:
        value, end = _decode(data, 0, 0, budget)
    except (struct.error, UnicodeDecodeError, TypeError, IndexError, ValueError, RecursionError) as err:
        raise CodecError(f"malformed message: {type(err).__name__}") from None
    if end != len(data):
        raise CodecError("trailing bytes")
    return value


def _length(data, at, unit=1):
    (n,) = _U32.unpack_from(data, at)
    if n * unit > len(data) - at - 4:
        raise CodecError("length past the end")
    return n, at + 4


def _decode(data, at, depth, budget):
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_DEPTH:
        raise CodecError("too many or too deeply nested values")
    tag, at = data[at : at + 1], at + 1
    if tag == b"N":
        return None, at
    if tag in (b"T", b"F"):
        return tag == b"T", at
    if tag == b"i":
        n, at = _length(data, at)
        return int.from_bytes(data[at : at + n], "little", signed=True), at + n
    if tag == b"f":
        return _F64.unpack_from(data, at)[0], at + 8
    if tag == b"c":
        return complex(_F64.unpack_from(data, at)[0], _F64.unpack_from(data, at + 8)[0]), at + 16
    if tag in (b"s", b"b"):
        n, at = _length(data, at)
        raw = bytes(data[at : at + n])
        return (raw.decode("utf-8", "surrogatepass") if tag == b"s" else raw), at + n
    if tag in _SEQUENCE_OF_TAG:
        n, at = _length(data, at)
        items = []
        for _ in range(n):
            item, at = _decode(data, at, depth + 1, budget)
            items.append(item)
        return _SEQUENCE_OF_TAG[tag](items), at
    if tag == b"d":
        n, at = _length(data, at, 2)
        result = {}
        for _ in range(n):
            key, at = _decode(data, at, depth + 1, budget)
            result[key], at = _decode(data, at, depth + 1, budget)
        return result, at
    raise CodecError(f"unknown tag {tag!r}")


def send(fd, value):
    send_encoded(fd, encode(value))


def send_encoded(fd, data):
    if len(data) > MAX_MESSAGE:
        raise CodecError("message too large")
    view = memoryview(_U32.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _read_exactly(fd, n):
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def receive(fd):
    (n,) = _U32.unpack(_read_exactly(fd, 4))
    if n > MAX_MESSAGE:
        raise CodecError("message too large")
    return decode(_read_exactly(fd, n))


# ---------------------------------------------------------------------------------- the solution's process
def _builtin_exception_name(err):
    name = type(err).__name__
    return name if getattr(builtins, name, None) is type(err) else ""


def serve_solution(job, requests, replies):
    """Run the solution (and setup), announce its top-level names, then answer calls until EOF."""
    namespace = {"__name__": "solution", "__builtins__": builtins}
    try:
        exec(compile(job["code"], "<solution>", "exec"), namespace)
        if job["setup"]:
            exec(compile(job["setup"], "<setup>", "exec"), namespace)
    except BaseException:  # SystemExit included: a solution that exits has not passed anything
        send(replies, ("failed",))
        return
    callables, values, modules = [], {}, {}
    for name, value in list(namespace.items()):
        if name.startswith("__"):
            continue
        if type(value) is type(os):
            modules[name] = value.__name__
        elif callable(value):
            callables.append(name)
        else:
            try:
                if len(encode(value)) <= MAX_GLOBAL_BYTES:
                    values[name] = value
            except Exception:
                pass  # not plain data: invisible to the tests
    send(replies, ("ready", callables, values, modules))
    while True:
        try:
            _, name, args, kwargs = receive(requests)
        except EOFError:
            return
        try:
            result = namespace[name](*args, **kwargs)
        except BaseException as err:
            try:
                message = str(err)[:2000]
            except BaseException:
                message = ""
            kind = "raise" if isinstance(err, Exception) else "exit"
            send(replies, (kind, _builtin_exception_name(err), message))
            continue
        changed = [(where, value) for where, value in [*enumerate(args), *kwargs.items()]
                   if type(value) in (list, dict, set)]
        try:
            reply = encode(("ok", result, changed))
        except Exception as err:
            reply = encode(("unsupported", f"{name}() returned data the sandbox cannot pass back: {err}", ""))
        send_encoded(replies, reply)


# -------------------------------------------------------------------------------------- the test process
class SolutionUnavailable(BaseException):
    """The solution exited, crashed, sent garbage or returned non-plain data. A BaseException, so that
    a test's `except Exception` cannot turn it into a pass."""


def _restore(original, value):
    if type(original) is type(value) is list:
        original[:] = value
    elif type(original) is type(value) and type(value) in (dict, set):
        original.clear()
        original.update(value)


def run_tests(job, requests, replies, report):
    """Run setup and each test here, against proxies of the solution; write '<index> <0|1>' lines to
    `report`."""
    # Bound before any module the solution names is imported here, so that no import can skip the tests.
    run, build, number, write, Failure = exec, compile, enumerate, os.write, BaseException
    try:
        announcement = receive(replies)
    except (EOFError, CodecError):
        return
    if type(announcement) is not tuple or announcement[:1] != ("ready",) or len(announcement) != 4:
        return
    _, callables, values, modules = announcement
    broken = []

    def proxy_for(name):
        def proxy(*args, **kwargs):
            if broken:
                raise SolutionUnavailable(broken[0])
            try:
                send(requests, ("call", name, args, kwargs))
            except CodecError as err:
                raise SolutionUnavailable(f"{name}(): arguments are not plain data ({err})") from None
            except OSError:
                broken.append("the solution's process is gone")
                raise SolutionUnavailable(broken[0]) from None
            try:
                reply = receive(replies)
                kind = reply[0]
                if kind == "ok":
                    _, result, changed = reply
                    for where, value in changed:
                        _restore(args[where] if type(where) is int else kwargs[where], value)
                    return result
                _, exception_name, message = reply
            except (EOFError, OSError, CodecError, ValueError, TypeError, IndexError, KeyError):
                broken.append("the solution's process died or broke the protocol")
                raise SolutionUnavailable(broken[0]) from None
            if kind == "raise":
                exception = getattr(builtins, exception_name, None)
                if not (isinstance(exception, type) and issubclass(exception, Exception)):
                    exception = Exception
                raise exception(message)
            raise SolutionUnavailable(f"{name}(): {message or 'the solution exited'}")

        proxy.__name__ = proxy.__qualname__ = name
        return proxy

    # The solution's names may not replace builtins the tests use (`def abs(x): return 0`), and a module it
    # imported is shown only under its own name (`import math`, not `import cmath as math`).
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    for name, module in modules.items():
        if type(name) is str and name == module and not hasattr(builtins, name):
            try:
                __import__(module)
                namespace[name] = sys.modules[module]
            except BaseException:
                pass
    namespace.update({name: value for name, value in values.items() if not hasattr(builtins, name)})
    namespace.update({name: proxy_for(name) for name in callables if not hasattr(builtins, name)})
    try:
        if job["setup"]:
            run(build(job["setup"], "<setup>", "exec"), namespace)
    except Failure:
        return
    for index, test in number(job["tests"]):
        try:
            run(build(test, "<test %d>" % index, "exec"), namespace)
            passed = 1
        except Failure:
            passed = 0
        write(report, b"%d %d\n" % (index, passed))


# ------------------------------------------------------------------------------------------------ launcher
def _libc():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def check(result, *what):
        if result != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"{os.strerror(errno)}: {' '.join(map(str, what))}")

    return ctypes, libc, check


_SYSCALLS = {"x86_64": {"pivot_root": 155, "capset": 126}, "aarch64": {"pivot_root": 41, "capset": 91}}
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18)
_KEPT_MOUNT_FLAGS = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | 1024 | 2048 | 4096  # noatime, nodiratime, relatime
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 1, 4, 38


def _die_with_parent(libc):
    libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)  # cleared by credential changes: set again after each


def _write(path, text):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _enter_namespaces(job, libc, check):
    """New mount, PID, network, IPC and UTS namespaces; sets job["uid"], the uid the code will run as.

    As root: the code runs as a host uid of its own, UID_BASE + this launcher's pid (unique among live
    sandboxes), because the kernel does not enforce RLIMIT_NPROC for root, also not through a user
    namespace mapped to root. As a normal user: a new user namespace mapping just that user, which gives
    the capabilities to build the root and makes RLIMIT_NPROC count this namespace's processes only."""
    namespaces = 0x00020000 | 0x20000000 | 0x40000000 | 0x08000000 | 0x04000000  # mount pid net ipc uts
    user_id, group_id = os.geteuid(), os.getegid()
    if user_id == 0:
        check(libc.unshare(namespaces), "unshare(mount, pid, net, ipc, uts)")
        job["uid"] = UID_BASE + os.getpid()
        return
    check(libc.unshare(0x10000000 | namespaces), "unshare(user, mount, pid, net, ipc, uts)")
    _die_with_parent(libc)
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{user_id} {user_id} 1\n")
    _write("/proc/self/gid_map", f"{group_id} {group_id} 1\n")
    job["uid"] = user_id


def _mount(check, libc, source, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()
    check(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), "mount", source, target)


def _bind(check, libc, source, target, writable=False):
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
    _mount(check, libc, source, target, None, MS_BIND | MS_REC)
    # A remount must keep the source's locked flags (nodev, noexec...), or the kernel refuses it.
    flags = (os.statvfs(target).f_flag & _KEPT_MOUNT_FLAGS) | MS_NOSUID
    if not writable:
        flags |= MS_RDONLY
    _mount(check, libc, None, target, None, MS_BIND | MS_REMOUNT | flags)


def _build_root(job, libc, check):
    """In the new mount + PID namespace: a fresh tmpfs root with read-only binds of job["visible"]."""
    calls = _SYSCALLS[os.uname().machine]
    _mount(check, libc, None, "/", None, MS_REC | MS_PRIVATE)
    _mount(check, libc, "tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")  # only in this namespace
    os.chdir("/tmp")
    os.mkdir("newroot")
    os.mkdir("oldroot")
    check(libc.syscall(calls["pivot_root"], b".", b"oldroot"), "pivot_root")
    os.chdir("/")
    _mount(check, libc, "tmpfs", "/newroot", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    # The private scratch first, also shown at /tmp, so that read-only binds of a Python living under the
    # host's /tmp (a checkout in /tmp) land inside it rather than in place of it.
    scratch = "/newroot" + job["workdir"]
    os.makedirs(scratch)
    _mount(check, libc, "tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={job['scratch_mb']}m,mode=0700,uid={job['uid']},gid={job['uid']}")
    if job["workdir"] != "/tmp":
        _bind(check, libc, scratch, "/newroot/tmp", writable=True)
    for path in job["visible"]:
        source, target = "/oldroot" + path, "/newroot" + path
        if os.path.islink(source):  # e.g. /bin -> usr/bin on merged-/usr systems
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.symlink(os.readlink(source), target)
        elif os.path.exists(source):
            _bind(check, libc, source, target)
    for node in ("null", "zero", "full", "random", "urandom"):
        _bind(check, libc, "/oldroot/dev/" + node, "/newroot/dev/" + node, writable=True)
    os.symlink("/proc/self/fd", "/newroot/dev/fd")
    os.makedirs("/newroot/proc")
    try:  # a /proc of this PID namespace only; needs the host's /proc still visible, so before the pivot
        _mount(check, libc, "proc", "/newroot/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:
        pass  # e.g. a container that masks parts of /proc: the code runs without /proc
    check(libc.umount2(b"/oldroot", 2), "umount /oldroot")
    os.chdir("/newroot")
    check(libc.syscall(calls["pivot_root"], b".", b"."), "pivot_root")
    check(libc.umount2(b".", 2), "umount old root")
    os.chdir("/")
    _mount(check, libc, None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _drop_privileges(job, ctypes, libc, check):
    if os.geteuid() == 0:  # the evaluator is root: become the sandbox's own unprivileged uid
        os.setgroups([])
        os.setresgid(job["uid"], job["uid"], job["uid"])
        os.setresuid(job["uid"], job["uid"], job["uid"])
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    check(libc.syscall(_SYSCALLS[os.uname().machine]["capset"], header, (ctypes.c_uint32 * 6)()), "capset")
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def _status_code(status):
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def enter_sandbox(job, native=None):
    """Trusted set-up; returns in the sandboxed process (with namespaces: a child of a PID-namespace init,
    as the code's uid, without capabilities), its rlimits set. `native`: _libc(), if already loaded."""
    try:
        if job["isolate"]:
            ctypes, libc, check = native or _libc()
            _die_with_parent(libc)
            _enter_namespaces(job, libc, check)
            init = os.fork()
            if init:  # this launcher: mirror the init's status (which is the payload's)
                os._exit(_status_code(os.waitpid(init, 0)[1]))
            _die_with_parent(libc)
            libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
            _build_root(job, libc, check)
            payload = os.fork()
            if payload:  # PID 1: reap orphans until the payload ends; our exit kills the rest
                while True:
                    pid, status = os.wait()
                    if pid == payload:
                        os._exit(_status_code(status))
            _drop_privileges(job, ctypes, libc, check)
            _die_with_parent(libc)
            os.setsid()  # its process group is then inside the namespace: killpg(0) reaches nothing outside
        elif sys.platform == "linux":
            _die_with_parent((native or _libc())[1])
        os.chdir(job["workdir"])
        if job["isolate"]:  # outside a user namespace it would count every process of the user
            resource.setrlimit(resource.RLIMIT_NPROC, (job["max_processes"], job["max_processes"]))
        resource.setrlimit(resource.RLIMIT_AS, (job["memory_bytes"], job["memory_bytes"]))
        resource.setrlimit(resource.RLIMIT_CPU, (job["cpu_seconds"], job["cpu_seconds"] + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (job["file_bytes"], job["file_bytes"]))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        sys.path.extend(job["site_packages"])
    except BaseException as err:  # the evaluator logs this line; nothing of the payload has run
        os.write(2, f"sandbox set-up failed: {type(err).__name__}: {err}\n".encode())
        os._exit(SETUP_FAILED)


def _only_fds(*keep):
    """Close every descriptor but `keep`; stdio not kept becomes /dev/null."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        if fd not in keep:
            os.dup2(null, fd)
    low = 3
    for fd in sorted(set(keep) | {os.sysconf("SC_OPEN_MAX")}):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1


def main(job):
    if job["role"] == "stdio":  # judges' rules: the evaluator reads the exit status and stdout
        enter_sandbox(job)
        _only_fds(0, 1)
        exec(compile(job["code"], "<solution>", "exec"), {"__name__": "__main__", "__builtins__": builtins})
        return
    # Function tests: two sibling sandboxes joined by two pipes; the verdicts go to our stdout.
    native = _libc() if sys.platform == "linux" else None  # loaded once, before the forks
    to_solution, to_tests = os.pipe(), os.pipe()
    ends = {"solution": (to_solution[0], to_tests[1]), "tests": (to_solution[1], to_tests[0])}
    for role in ("solution", "tests"):
        pid = os.fork()
        if pid == 0:
            requests, replies = ends[role]
            for fd in ends["tests" if role == "solution" else "solution"]:
                os.close(fd)  # so that each side sees EOF as soon as the other side's sandbox is gone
            job["role"] = role
            enter_sandbox(job, native)
            if role == "solution":
                _only_fds(requests, replies)
                serve_solution(job, requests, replies)
            else:
                report = os.dup(1)
                _only_fds(report, requests, replies)
                run_tests(job, requests, replies, report)
            os._exit(0)
    for fd in (*to_solution, *to_tests):
        os.close(fd)
    os.waitpid(pid, 0)  # the test sandbox decides; the evaluator then kills the solution's
    os._exit(0)


if __name__ == "__main__":
    main(JOB)  # given by _BOOTSTRAP
'''


_BOOTSTRAP = """import marshal, sys
with open(int(sys.argv[1]), "rb") as job_file:
    code, job = marshal.loads(job_file.read())
exec(code, {"__name__": "__main__", "__builtins__": __builtins__, "JOB": job})
"""


@lru_cache(maxsize=2)
def _compiled(source):
    return compile(source, "<sandbox>", "exec")


@dataclass
class FunctionJob:
    """Run `code`, then each statement block of `tests` after `setup` against it (MBPP/HumanEval)."""

    code: str
    tests: list
    setup: str = ""
    timeout: float = DEFAULT_TIMEOUT_S
    memory_mb: int = DEFAULT_MEMORY_MB
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    max_processes: int = DEFAULT_MAX_PROCESSES


@dataclass
class StdioJob:
    """Run `code` as __main__ once per case with `inputs[i]` on stdin; compare stdout with `outputs[i]`."""

    code: str
    inputs: list
    outputs: list
    timeout: float = DEFAULT_TIMEOUT_S
    memory_mb: int = DEFAULT_MEMORY_MB
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    max_processes: int = DEFAULT_MAX_PROCESSES


@lru_cache(maxsize=1)
def _visible_paths():
    """Host paths the sandbox sees (read-only): system binaries and libraries, this Python and its
    site-packages. Nested paths are dropped (the outer bind shows them)."""
    wanted = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"]
    wanted += [os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix,
                                             os.path.dirname(os.path.realpath(sys.executable)))]
    wanted += [os.path.realpath(p) for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)]
    visible = []
    for path in sorted(set(wanted) - {"/"}, key=len):
        if not any(path == v or path.startswith(v.rstrip("/") + "/") for v in visible):
            visible.append(path)
    return visible


def _site_packages():
    return [p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)]


def _job_spec(job, role, isolate, workdir, **extra):
    timeout = float(job.timeout)
    return {
        "role": role, "isolate": isolate, "workdir": workdir, "visible": _visible_paths() if isolate else [],
        "scratch_mb": SCRATCH_MB,
        "max_processes": int(job.max_processes), "memory_bytes": int(job.memory_mb) << 20,
        "cpu_seconds": int(timeout + STARTUP_SLACK_S) + 1, "file_bytes": int(job.max_output_bytes),
        "site_packages": _site_packages(), **extra,
    }


class _Sandbox:
    """One launched sandbox process (and, with namespaces, everything inside its PID namespace)."""

    def __init__(self, spec, *, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, log_problems=True):
        self.workdir, self.log_problems, self.problem = None, log_problems, ""
        if not spec["isolate"]:
            self.workdir = spec["workdir"] = tempfile.mkdtemp(prefix="t3d-sandbox-")
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": spec["workdir"],
            "TMPDIR": spec["workdir"], "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
        }
        job_read, job_write = os.pipe()
        self.errors = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _BOOTSTRAP, str(job_read)], cwd="/", env=env, stdin=stdin,
                stdout=stdout, stderr=self.errors, pass_fds=(job_read,), start_new_session=True,
            )
        except BaseException:
            os.close(job_write)
            self.cleanup()
            raise
        finally:
            os.close(job_read)
        try:
            with open(job_write, "wb") as f:
                f.write(marshal.dumps((_compiled(_CHILD), spec)))
        except BrokenPipeError:
            pass  # the launcher died first; its status says so

    def wait(self, deadline):
        """Wait until the launcher exits or `deadline`; True if it exited in time. The launcher is left
        unreaped (a zombie), so its pid still holds the process-group id that `kill` signals."""
        try:
            pidfd = os.pidfd_open(self.proc.pid)
        except (AttributeError, OSError):
            pidfd = None
        if pidfd is not None:  # readable once the process has exited: no polling latency
            try:
                return _readable(pidfd, deadline)
            finally:
                os.close(pidfd)
        delay = 0.001
        while os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
        return True

    def kill(self):
        """SIGKILL the launcher's process group (the init with it, hence the whole PID namespace), reap.
        Returns the launcher's exit status; a set-up failure is logged."""
        # The launcher is not reaped before this, so its pid still holds the group id: no recycled group.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        self.errors.seek(0)
        self.problem = self.errors.read(2000).decode(errors="replace").strip()
        self.cleanup()
        if self.problem and self.log_problems:  # only the trusted launcher writes there (the payload: /dev/null)
            logger.warning("code sandbox: %s", self.problem)
        return self.proc.returncode

    def cleanup(self):
        self.errors.close()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _run_function(job):
    isolate = isolation() == NAMESPACES
    spec = _job_spec(job, "function", isolate, SANDBOX_DIR if isolate else None, code=job.code,
                     setup=job.setup or "", tests=[str(t) for t in job.tests])
    verdicts, verdicts_w = os.pipe()
    try:
        try:
            sandbox = _Sandbox(spec, stdout=verdicts_w)
        finally:
            os.close(verdicts_w)
        try:
            deadline = time.monotonic() + float(job.timeout) + STARTUP_SLACK_S
            output = _read_verdicts(verdicts, len(job.tests), deadline)
        finally:
            sandbox.kill()
    finally:
        os.close(verdicts)
    return _parse_verdicts(output, len(job.tests))


def _readable(fd, deadline):
    """Wait until `fd` is readable (or hung up) or `deadline`; poll, unlike select, takes any fd number."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0.0, deadline - time.monotonic()) * 1000))


def _read_verdicts(verdicts, n_tests, deadline):
    """The test process's report, read until every test has a line, the launcher exits or `deadline`
    (not waiting for namespaces to be torn down once the verdicts are in)."""
    output = b""
    while output.count(b"\n") < n_tests and _readable(verdicts, deadline):
        chunk = os.read(verdicts, 1 << 16)
        if not chunk:  # every holder of the write end is gone: the launcher has ended
            break
        output += chunk
    return output


def _parse_verdicts(output, n_tests):
    passed = [False] * n_tests
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1] in (b"0", b"1") and int(parts[0]) < n_tests:
            passed[int(parts[0])] = parts[1] == b"1"
    return passed


def _run_stdio(job, stdin_text):
    """(exit status, stdout bytes (capped), finished in time) of one sandboxed run of `job.code`."""
    isolate = isolation() == NAMESPACES
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stdin:
        stdin.write(stdin_text.encode("utf-8", errors="surrogatepass"))
        stdin.seek(0)
        sandbox = _Sandbox(_job_spec(job, "stdio", isolate, SANDBOX_DIR if isolate else None, code=job.code),
                           stdin=stdin, stdout=stdout)
        try:
            in_time = sandbox.wait(time.monotonic() + float(job.timeout) + STARTUP_SLACK_S)
        finally:
            returncode = sandbox.kill()
        stdout.seek(0)
        return returncode, stdout.read(int(job.max_output_bytes)), in_time


def _normalise(text):
    return " ".join(text.split())


def _run_stdio_case(job, case):
    returncode, output, in_time = _run_stdio(job, str(job.inputs[case]))
    if not in_time or returncode != 0:
        return False
    return _normalise(output.decode("utf-8", errors="replace")) == _normalise(str(job.outputs[case]))


@lru_cache(maxsize=1)
def isolation():
    """NAMESPACES if the namespace sandbox works on this machine (probed once per process: a sandboxed
    `print(6 * 7)`), else RLIMITS_ONLY, with a warning."""
    reason = "needs Linux on x86_64 or aarch64"
    if sys.platform == "linux" and os.uname().machine in ("x86_64", "aarch64"):
        probe = StdioJob("print(6 * 7)", [""], ["42"], timeout=10)
        with tempfile.TemporaryFile() as stdout:
            sandbox = _Sandbox(_job_spec(probe, "stdio", True, SANDBOX_DIR, code=probe.code), stdout=stdout,
                               log_problems=False)
            sandbox.wait(time.monotonic() + 30)
            returncode = sandbox.kill()
            stdout.seek(0)
            if returncode == 0 and stdout.read() == b"42\n":
                return NAMESPACES
            reason = sandbox.problem or f"the probe exited with status {returncode}"
    logger.warning(
        "code sandbox: Linux namespaces are unavailable here (%s); generated code runs with rlimits only: it can "
        "read your files, signal your processes and, deliberately, forge a pass. Do not grade untrusted models "
        "this way.", reason)
    return RLIMITS_ONLY


def _guarded(fn, *args, failed):
    """A sandbox-side failure (spawn error, bad input) fails this unit only, never the whole run."""
    try:
        return fn(*args)
    except Exception as err:
        logger.warning("sandbox run failed: %s: %s", type(err).__name__, err)
        return failed


def run_many(jobs, workers=None):
    """Run FunctionJob / StdioJob items in parallel (thread pool of sandboxes; stdio cases are separate
    units). Returns one list[bool] per job, in job order: per test (function) or per case (stdio)."""
    jobs = list(jobs)
    units = []  # (job index, case index or None)
    for j, job in enumerate(jobs):
        if isinstance(job, StdioJob):
            if len(job.inputs) != len(job.outputs):
                raise ValueError(f"job {j}: {len(job.inputs)} stdio inputs but {len(job.outputs)} outputs")
            units.extend((j, case) for case in range(len(job.inputs)))
        elif isinstance(job, FunctionJob):
            units.append((j, None))
        else:
            raise TypeError(f"job {j}: expected FunctionJob or StdioJob, got {type(job).__name__}")
    if units:
        isolation()  # probe (and warn) once, before the threads start

    def run_unit(unit):
        j, case = unit
        job = jobs[j]
        if case is None:
            return _guarded(_run_function, job, failed=[False] * len(job.tests))
        return _guarded(_run_stdio_case, job, case, failed=False)

    results = [None if isinstance(job, FunctionJob) else [False] * len(job.inputs) for job in jobs]
    workers = max(1, workers or os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=min(workers, max(1, len(units)))) as pool:
        for (j, case), outcome in zip(units, pool.map(run_unit, units)):
            if case is None:
                results[j] = outcome
            else:
                results[j][case] = outcome
    return results


def run_function_tests(code, tests, *, setup="", timeout=DEFAULT_TIMEOUT_S, memory_mb=DEFAULT_MEMORY_MB,
                       max_output_bytes=DEFAULT_MAX_OUTPUT_BYTES, max_processes=DEFAULT_MAX_PROCESSES):
    """Per test of `tests`: did it run without raising against `code` (after `setup`)?"""
    job = FunctionJob(code, list(tests), setup, timeout, memory_mb, max_output_bytes, max_processes)
    return run_many([job], workers=1)[0]


def run_stdio_tests(code, inputs, outputs, *, timeout=DEFAULT_TIMEOUT_S, memory_mb=DEFAULT_MEMORY_MB,
                    max_output_bytes=DEFAULT_MAX_OUTPUT_BYTES, max_processes=DEFAULT_MAX_PROCESSES, workers=None):
    """Per case: exit status 0 in time and whitespace-normalised stdout equal to the expected output."""
    job = StdioJob(code, list(inputs), list(outputs), timeout, memory_mb, max_output_bytes, max_processes)
    return run_many([job], workers)[0]
