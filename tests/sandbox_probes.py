"""Hostile solutions for the code sandbox, shared by the sandbox tests and the eval.py test.

Three item kinds, each with tests no honest computation can pass without knowing them:
  "add":   assert add(1, 2) == 3 / add(2, 2) == 4 (attacks on the evaluator: escape, kill, exhaust, forge)
  "f":     assert f(1) == 17 / f(5) == -3 / f(9) == 'nine' (arbitrary values: only a leak of the tests passes)
  "stdio": input "1", expected output "zebra-17" (only a leak of the expected output passes)
Every "f" / "stdio" probe harvests one place a leak could be (frames, globals, gc, /proc, descriptors,
environment, files, memory...) and answers with whatever it finds there; `HONEST` pass. A probe that
would pass if its place held the tests is a real probe: `leaky_run` checks that outside the sandbox.
"""

ADD_TESTS = ["assert add(1, 2) == 3", "assert add(2, 2) == 4"]
F_TESTS = ["assert f(1) == 17", "assert f(5) == -3", "assert f(9) == 'nine'"]
STDIO_INPUTS, STDIO_OUTPUTS = ["1\n"], ["zebra-17"]
ADD = "def add(a, b):\n    return a + b\n"
HONEST = {
    "honest add": ("add", ADD),
    "honest f": ("f", "def f(x):\n    return {1: 17, 5: -3, 9: 'nine'}[x]\n"),
    "honest stdio": ("stdio", "print('zebra-%d' % (16 + int(input())))\n"),
}

# What a forger would parse out of leaked text: f's expected values, or the stdio expected output. The
# patterns are written so that this source itself never matches them.
_HARVEST = r'''
import os, re, sys
_TABLE, _OUTPUT = {}, []
_F_RE = re.compile(r"f\((-?[0-9]+)\) == ('[^'\n\\]*'|-?[0-9]+)")
_OUT_RE = re.compile(r"zebra-[0-9]+")

def _text(data):
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data).decode("latin-1")
    return data if isinstance(data, str) else ""

def _harvest(data):
    text = _text(data)
    if not text:
        return
    for arg, value in _F_RE.findall(text):
        _TABLE[int(arg)] = value[1:-1] if value.startswith("'") else int(value)
    _OUTPUT.extend(_OUT_RE.findall(text))

def _deep(obj, depth=0, seen=None):
    """Strings and bytes anywhere in `obj` (containers, attributes), a few levels deep."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 6:
        return
    seen.add(id(obj))
    try:
        if isinstance(obj, (str, bytes, bytearray)):
            _harvest(obj)
        elif isinstance(obj, dict):
            for key, value in list(obj.items()):
                _deep(key, depth + 1, seen)
                _deep(value, depth + 1, seen)
        elif isinstance(obj, (list, tuple, set, frozenset)):
            for value in list(obj):
                _deep(value, depth + 1, seen)
        elif type(obj).__name__ == "frame":
            _deep(obj.f_locals, depth + 1, seen)
            _deep(obj.f_globals, depth + 1, seen)
            _deep(obj.f_code.co_consts, depth + 1, seen)
        elif type(obj).__name__ == "function":
            _deep(obj.__code__.co_consts, depth + 1, seen)
            _deep(obj.__defaults__, depth + 1, seen)
            for cell in obj.__closure__ or ():
                try:
                    _deep(cell.cell_contents, depth + 1, seen)
                except ValueError:
                    pass
        elif hasattr(obj, "__dict__") and type(obj).__name__ != "module":
            _deep(vars(obj), depth + 1, seen)
    except Exception:
        pass

def _frames(frame):
    while frame is not None:
        _deep(frame)
        frame = frame.f_back

def _read_path(path, limit=1 << 22):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return
    try:
        _harvest(os.read(fd, limit))
    except OSError:
        pass
    finally:
        os.close(fd)

def _read_fd(fd):
    try:
        os.set_blocking(fd, False)
        _harvest(os.pread(fd, 1 << 22, 0) if os.lseek(fd, 0, os.SEEK_CUR) >= 0 else b"")
    except OSError:
        try:
            _harvest(os.read(fd, 1 << 22))
        except OSError:
            pass

def _memory(pid="self"):
    """Every readable mapping of a process, through /proc/<pid>/mem."""
    try:
        maps = open(f"/proc/{pid}/maps").read().splitlines()
        mem = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    except OSError:
        return
    for line in maps:
        fields = line.split()
        if len(fields) < 2 or not fields[1].startswith("r") or line.endswith(("[vvar]", "[vsyscall]")):
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        for at in range(start, end, 1 << 24):
            try:
                _harvest(os.pread(mem, min(1 << 24, end - at), at))
            except OSError:
                break
    os.close(mem)

def _proc_files(pid="self"):
    """Every small file of /proc/<pid> and its fd/ directory, read."""
    base = f"/proc/{pid}"
    for name in ("cmdline", "environ", "comm", "status", "stat", "maps", "mountinfo", "cwd", "root",
                 "attr/current", "loginuid", "personality", "wchan", "stack", "syscall", "auxv"):
        _read_path(f"{base}/{name}")
    for sub in ("fd", "fdinfo", "map_files"):
        try:
            names = os.listdir(f"{base}/{sub}")
        except OSError:
            continue
        for name in names:
            try:
                _harvest(os.readlink(f"{base}/{sub}/{name}"))
            except OSError:
                pass
            _read_path(f"{base}/{sub}/{name}")

def _pids():
    try:
        return [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []

def _files(*roots, budget=5000):
    """Regular files under `roots` (at most `budget`), read; FIFOs and devices are left alone."""
    import stat
    for root in roots:
        for directory, subdirs, names in os.walk(root):
            subdirs[:] = [d for d in subdirs if "python" not in d and d != "site-packages"]
            for name in names:
                path = os.path.join(directory, name)
                budget -= 1
                if budget < 0:
                    return
                try:
                    if stat.S_ISREG(os.lstat(path).st_mode):
                        _read_path(path, 1 << 20)
                except OSError:
                    pass

def _answer():
    """The stdio answer: the leaked expected output, if any."""
    print(_OUTPUT[0] if _OUTPUT else "nothing found")

def f(x):
    return _TABLE.get(x)
'''

# name -> code harvesting one place (at import time unless it says otherwise). Run as "f" and as "stdio".
_PLACES = {
    "stack walk (sys._getframe up)": "_frames(sys._getframe(0))\n",
    "stack walk at call time": "def f(x):\n    _frames(sys._getframe(0))\n    return _TABLE.get(x)\n",
    "traceback frames": "try:\n    raise RuntimeError\nexcept RuntimeError as err:\n    _frames(err.__traceback__.tb_frame)\n",
    "inspect.stack": "import inspect\nfor info in inspect.stack(0):\n    _deep(info.frame)\n",
    "sys._current_frames": "for top in sys._current_frames().values():\n    _frames(top)\n",
    "profile hook at call time": "sys.setprofile(lambda frame, event, arg: _deep(frame.f_locals))\n",
    "audit hook": (
        "_busy = []\n"
        "def _hook(event, args):\n    if not _busy:\n        _busy.append(1)\n"
        "        try:\n            _deep(args)\n        finally:\n            _busy.clear()\n"
        "sys.addaudithook(_hook)\n"
    ),
    "globals": "_deep(globals())\n",
    "builtins": "import builtins\n_deep(vars(builtins))\n",
    "sys.modules": "for module in list(sys.modules.values()):\n    _deep(getattr(module, '__dict__', {}), 3)\n",
    "__main__ module": "_deep(vars(sys.modules.get('__main__', sys)))\n",
    "gc.get_objects scan": "import gc\nfor obj in gc.get_objects():\n    _deep(obj, 5)\n",
    "gc referrers at call time": (
        "import gc\n"
        "def f(x):\n    frame = sys._getframe(0)\n    while frame is not None:\n"
        "        for ref in gc.get_referrers(*frame.f_locals.values()):\n            _deep(ref, 4)\n"
        "        frame = frame.f_back\n    return _TABLE.get(x)\n"
    ),
    "/proc/self/cmdline": "_read_path('/proc/self/cmdline')\n",
    "/proc/self/environ": "_read_path('/proc/self/environ')\n",
    "/proc/self/fd/* read": "for name in os.listdir('/proc/self/fd'):\n    _read_path('/proc/self/fd/' + name)\n",
    "/proc/self/maps and mem": "_read_path('/proc/self/maps')\n_memory('self')\n",
    "/proc/self files": "_proc_files('self')\nfor task in os.listdir('/proc/self/task'):\n"
                        "    _proc_files('self/task/' + task)\n",
    "memory via ctypes": (  # anonymous mappings only: a file mapped past its end raises SIGBUS
        "import ctypes\n"
        "for line in open('/proc/self/maps').read().splitlines():\n"
        "    fields = line.split()\n"
        "    if fields[1].startswith('r') and (len(fields) < 6 or fields[5] in ('[heap]', '[stack]')):\n"
        "        start, end = (int(x, 16) for x in fields[0].split('-'))\n"
        "        try:\n            _harvest(ctypes.string_at(start, end - start))\n"
        "        except Exception:\n            pass\n"
    ),
    "inherited fds scan": "for fd in range(1024):\n    _read_fd(fd)\n",
    "pipe read-ahead at call time": (
        "def f(x):\n    for name in os.listdir('/proc/self/fd'):\n        _read_fd(int(name))\n"
        "    return _TABLE.get(x)\n"
    ),
    "stdin": "_read_fd(0)\n_harvest(sys.stdin.read() if sys.stdin else '')\n",
    "parent /proc/<ppid>/cmdline": "_read_path(f'/proc/{os.getppid()}/cmdline')\n",
    "parent /proc/<ppid>/environ": "_read_path(f'/proc/{os.getppid()}/environ')\n",
    "parent /proc/<ppid>/fd": "_proc_files(os.getppid())\n",
    "parent memory": "_memory(os.getppid())\n",
    "parent memory via process_vm_readv": (
        "import ctypes\n"
        "class IoVec(ctypes.Structure):\n    _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "try:\n    maps = open(f'/proc/{os.getppid()}/maps').read().splitlines()\nexcept OSError:\n"
        "    maps = []\n"
        "for line in maps:\n    fields = line.split()\n    if not fields[1].startswith('r'):\n        continue\n"
        "    start, end = (int(x, 16) for x in fields[0].split('-'))\n"
        "    size = min(end - start, 1 << 26)\n    buf = ctypes.create_string_buffer(size)\n"
        "    local, remote = IoVec(ctypes.addressof(buf), size), IoVec(start, size)\n"
        "    if libc.process_vm_readv(os.getppid(), ctypes.byref(local), 1, ctypes.byref(remote), 1, 0) > 0:\n"
        "        _harvest(buf.raw)\n"
    ),
    "ptrace the parent": (
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "if libc.ptrace(0x4206, os.getppid(), 0, 0) == 0:  # PTRACE_SEIZE: no stop\n"
        "    _memory(os.getppid())\n    _proc_files(os.getppid())\n"
    ),
    "every process in /proc": "for pid in _pids():\n    _proc_files(pid)\n",
    "every process's memory": "for pid in _pids():\n    _memory(pid)\n",
    "sys.argv and sys.orig_argv": "_deep(sys.argv)\n_deep(getattr(sys, 'orig_argv', []))\n",
    "os.environ": "_deep(dict(os.environ))\n_deep(dict(getattr(os, 'environb', {})))\n",
    "files in scratch, /tmp, /dev/shm, cwd, HOME": (
        "_files(os.getcwd(), '/tmp', '/dev/shm', '/run', '/var/tmp', os.path.expanduser('~'))\n"
    ),
    "files in the whole visible tree": (
        "for top in os.listdir('/'):\n    if top not in ('proc', 'sys', 'dev', 'usr', 'lib', 'lib64', 'lib32', 'bin', 'sbin'):\n"
        "        _files('/' + top)\n"
    ),
}

# Stdio probes: the same places, answered on stdout (call-time places have no call: run at import).
_STDIO_PLACES = [
    "stack walk (sys._getframe up)", "gc.get_objects scan", "sys.modules", "/proc/self/cmdline",
    "/proc/self/environ", "/proc/self/fd/* read", "/proc/self/maps and mem", "inherited fds scan",
    "parent /proc/<ppid>/fd", "parent memory", "every process in /proc", "sys.argv and sys.orig_argv",
    "os.environ", "files in scratch, /tmp, /dev/shm, cwd, HOME",
]

# Attacks on the evaluator and on the verdict channel (the "add" tests: success defines a correct add).
ATTACKS = {
    "kill the parent": "import os\nos.kill(os.getppid(), 9)\n",
    "kill the group": "import os\nos.killpg(0, 9)\n",
    "kill everything": "import os\nos.kill(-1, 9)\n",
    "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
    "infinite loop": "while True:\n    pass\n",
    "memory bomb": "chunks = []\nwhile True:\n    chunks.append(bytearray(1 << 26))\n",
    "file bomb": "with open('big', 'wb') as f:\n    for _ in range(100):\n        f.write(b'x' * (1 << 20))\n" + ADD,
    "sys.exit(0)": ADD + "import sys\nsys.exit(0)\n",
    "os._exit(0)": ADD + "import os\nos._exit(0)\n",
    "forge via frames": "import os, sys\nframe = sys._getframe(0)\nwhile frame:\n"
                        "    for fd in range(64):\n        try:\n            os.write(fd, b'0 1\\n')\n"
                        "        except OSError:\n            pass\n    frame = frame.f_back\nos._exit(0)\n",
    "forge via gc": "import gc\nfor obj in gc.get_objects():\n    if isinstance(obj, dict) and 'tests' in obj:\n"
                    "        obj['tests'] = ['pass']\n",
    "forge via gc file objects": (
        "import gc, io\nfor obj in gc.get_objects():\n    if isinstance(obj, io.IOBase):\n"
        "        try:\n            obj.write(b'0 1\\n1 1\\n')\n            obj.flush()\n        except Exception:\n"
        "            pass\n"
    ),
    "forge via audit hook": "import os, sys\nsys.addaudithook(lambda event, args: os.write(1, b'0 1\\n'))\n"
                            "def add(a, b):\n    return 0\n",
    "forge via other processes' fds": (
        "import os\nfor pid in filter(str.isdigit, os.listdir('/proc')):\n    for fd in range(8):\n"
        "        try:\n            with open(f'/proc/{pid}/fd/{fd}', 'wb') as f:\n"
        "                f.write(b'0 1\\n1 1\\n')\n        except OSError:\n            pass\n"
    ),
    "forge via every fd": "import os\nfor fd in range(1024):\n    try:\n        os.write(fd, b'0 1\\n1 1\\n')\n"
                          "    except OSError:\n        pass\n",
    "garbage on every pipe": (
        "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'\\xff\\xff\\xff\\x7fzzz')\n"
        "    except OSError:\n        pass\ndef add(a, b):\n    return 0\n"
    ),
    "__eq__ always True": "class Anything:\n    def __eq__(self, other):\n        return True\n"
                          "def add(a, b):\n    return Anything()\n",
    "subclass of a plain type": "class Three(int):\n    def __eq__(self, other):\n        return True\n"
                                "def add(a, b):\n    return Three(7)\n",
    "shadowing builtins": "def sorted(x):\n    return [1, 2]\ndef abs(x):\n    return 0\n"
                          "def add(a, b):\n    return 0\n",
    "patching builtins": "import builtins\nbuiltins.exec = builtins.compile = lambda *a, **k: None\n"
                         "def add(a, b):\n    return 0\n",
    "write outside": "open('/work/escaped.txt', 'w').write('x')\nopen('/escaped.txt', 'w').write('x')\n" + ADD,
}


def probes():
    """name -> (kind, code): every hostile probe (not the honest answers)."""
    found = {name: ("add", code) for name, code in ATTACKS.items()}
    for name, body in _PLACES.items():
        found[f"leak f: {name}"] = ("f", _HARVEST + body)
    for name in _STDIO_PLACES:
        found[f"leak stdio: {name}"] = ("stdio", _HARVEST + _PLACES[name] + "_answer()\n")
    return found


def item_tests(kind):
    """(function tests or None, stdio inputs, stdio outputs) of an item kind."""
    if kind == "stdio":
        return None, STDIO_INPUTS, STDIO_OUTPUTS
    return (ADD_TESTS if kind == "add" else F_TESTS), None, None


# --------------------------------------------------------------------------- the probes' own check (no sandbox)
# Places a plain subprocess cannot leak in a way safe to provoke on a shared host: other users' processes
# (reading their pipes would steal their data), the whole file tree (too big), stdin of a stdio run.
NOT_SELF_CHECKED = {"every process in /proc", "every process's memory", "files in the whole visible tree"}

_LEAKY_CHILD = r'''
import io, json, os, sys
kind, code = json.loads(os.environ["PROBE"])
LEAKED = json.loads(sys.argv[1])  # a module global of __main__, in argv, environ, a pipe, a file, memory
job = {"code": code, "tests": LEAKED}

def run(job):  # the frame that runs the solution holds the job, as the sandbox's once did
    import builtins
    builtins._job = job  # a runner keeping its state in builtins, or in the solution's globals
    namespace = {"__name__": "solution", "__builtins__": builtins, "_job": job}
    out, sys.stdout = sys.stdout, io.StringIO()
    try:
        exec(compile(job["code"], "<solution>", "exec"), namespace)
        compile("\n".join(str(t) for t in job["tests"]), "<tests>", "exec")  # an in-process test runner
        if kind == "stdio":
            return sys.stdout.getvalue().split() == ["zebra-17"]
        return [namespace["f"](x) for x in (1, 5, 9)] == [17, -3, "nine"]
    finally:
        sys.stdout = out

print(json.dumps(run(job)))
'''

_LEAKY_PARENT = r'''
import json, os, subprocess, sys, tempfile
secret = sys.argv[1]
with open(os.path.join(os.getcwd(), "tests.txt"), "w") as f:
    f.write(secret)
held = open(os.path.join(os.getcwd(), "tests.txt"))  # an open descriptor of the parent
read, write = os.pipe()
os.write(write, secret.encode())  # an inherited descriptor with the tests waiting in it
child = subprocess.run([sys.executable, "-c", sys.argv[2], secret], pass_fds=(read,), capture_output=True,
                       text=True, timeout=60, input=secret, env={**os.environ, "LEAKED": secret})
print(child.stdout.strip().splitlines()[-1] if child.stdout.strip() else "crashed: " + child.stderr[-500:])
'''


def leaky_run(kind, code, workdir):
    """Run a probe outside any sandbox, where every place it looks holds the tests (its frames, globals,
    argv, environment, descriptors, memory, its parent's too, files in its directory): "true" if it then
    passes, as it should."""
    import json
    import os
    import subprocess
    import sys

    secret = json.dumps(F_TESTS + [f"assert output == {STDIO_OUTPUTS[0]!r}"])
    proc = subprocess.run([sys.executable, "-c", _LEAKY_PARENT, secret, _LEAKY_CHILD], cwd=workdir,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PROBE": json.dumps([kind, code]), "LEAKED": secret})
    return proc.stdout.strip() or proc.stderr[-500:]
