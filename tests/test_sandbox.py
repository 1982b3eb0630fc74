"""Sandbox: correct code passes, wrong code fails, and no exit/kill/forgery/timeout/memory trick passes."""
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from t3d.eval import sandbox
from t3d.eval.sandbox import FunctionJob, StdioJob, codec, host, run_function_tests, run_many, run_stdio_tests

ADD = "def add(a, b):\n    return a + b\n"
ADD_TESTS = ["assert add(1, 2) == 3", "assert add(0, 0) == 0"]


def test_correct_code_passes_and_wrong_code_fails_per_test():
    assert run_function_tests(ADD, ADD_TESTS) == [True, True]
    assert run_function_tests("def add(a, b):\n    return a - b\n", ADD_TESTS) == [False, True]
    assert run_function_tests("def add(a, b) return", ADD_TESTS) == [False, False]  # syntax error
    assert run_function_tests("raise ValueError('boom')", ADD_TESTS) == [False, False]


def test_setup_runs_before_tests_and_prints_do_not_matter():
    code = "def area(r):\n    print('debug', r)\n    return PI * r * r\n"
    assert run_function_tests(code, ["assert area(1) == 3"], setup="PI = 3") == [True]
    assert run_function_tests(code, ["assert area(1) == 3"]) == [False]  # PI undefined


@pytest.mark.parametrize(
    "code",
    [
        "import sys\nsys.exit(0)",
        "raise SystemExit",
        "raise SystemExit(0)",
        "import os\nos._exit(0)",
        "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
        "exit()",
    ],
)
def test_exiting_early_never_passes(code):
    assert run_function_tests(ADD + code, ADD_TESTS) == [False, False]


def test_exit_inside_a_test_fails_that_test_and_the_rest():
    tests = ["assert add(1, 2) == 3", "import sys; sys.exit(0)", "import os; os._exit(0)", "assert add(2, 2) == 4"]
    assert run_function_tests(ADD, tests) == [True, False, False, False]


def test_forged_markers_do_not_pass():
    forge = (
        "import os, sys\n"
        "for fd in range(1, 12):\n"
        "    for i in range(4):\n"
        "        for line in (f'{i} 1\\n', f'PASS {i} 1\\n', f'0000 {i} 1\\n'):\n"
        "            try:\n"
        "                os.write(fd, line.encode())\n"
        "            except OSError:\n"
        "                pass\n"
        "print('0 1\\n1 1')\n"
        "os._exit(0)\n"
    )
    assert run_function_tests(ADD + forge, ADD_TESTS) == [False, False]


def test_patching_builtins_cannot_skip_tests():
    patch = "import builtins\nbuiltins.exec = builtins.compile = lambda *a, **k: None\n"
    assert run_function_tests(ADD.replace("a + b", "a * b") + patch, ADD_TESTS) == [False, True]


def test_infinite_loop_times_out():
    start = time.monotonic()
    assert run_function_tests("while True:\n    pass\n", ["assert True"], timeout=0.5) == [False]
    assert time.monotonic() - start < 0.5 + sandbox.STARTUP_SLACK_S + 1.0


def test_tests_that_ran_before_a_hang_keep_their_result():
    tests = ["assert add(1, 2) == 3", "while True: pass", "assert True"]
    assert run_function_tests(ADD, tests, timeout=0.5) == [True, False, False]


def test_memory_bomb_is_stopped_quickly():
    start = time.monotonic()
    bomb = "chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 1024 * 1024))\n"
    assert run_function_tests(bomb, ["assert True"], memory_mb=256, timeout=5) == [False]
    assert run_function_tests("x = bytearray(4 * 1024 ** 3)", ["assert True"], memory_mb=256) == [False]
    assert time.monotonic() - start < 3.0  # stopped by the limit, not by the 5 s timeout


def test_code_that_fits_the_memory_limit_runs():
    code = "x = bytearray(20 * 1024 * 1024)\ndef size():\n    return len(x)\n"
    assert run_function_tests(code, ["assert size() == 20 * 1024 * 1024"], memory_mb=256) == [True]


def test_humaneval_style_item_passes():
    test = "def check(candidate):\n    assert candidate([1, 2, 3]) == 6\n    assert candidate([]) == 0\n"
    tests = [f"{test}\ncheck(total)"]
    assert run_function_tests("def total(xs):\n    return sum(xs)\n", tests) == [True]
    assert run_function_tests("def total(xs):\n    return len(xs)\n", tests) == [False]


def test_stdio_pass_fail_and_whitespace_normalisation():
    code = "a, b = map(int, input().split())\nprint(a + b)\nprint('  done ')\n"
    inputs, outputs = ["1 2\n", "3 4", "5 5\n"], ["3\ndone", "7   done\n", "11\ndone"]
    assert run_stdio_tests(code, inputs, outputs) == [True, True, False]


def test_stdio_exit_after_answer_is_fine_but_errors_and_timeouts_fail():
    assert run_stdio_tests("print(int(input()) * 2)\nimport sys\nsys.exit(0)\n", ["4"], ["8"]) == [True]
    assert run_stdio_tests("print(int(input()) * 2)\nraise RuntimeError\n", ["4"], ["8"]) == [False]
    assert run_stdio_tests("print(8)\nimport sys\nsys.exit(3)\n", ["4"], ["8"]) == [False]
    assert run_stdio_tests("print(8)\nwhile True: pass\n", ["4"], ["8"], timeout=0.5) == [False]
    assert run_stdio_tests("print(input())\nprint(input())\n", ["only one line"], ["only one line"]) == [False]


def test_stdio_output_is_capped():
    spam = "while True:\n    print('x' * 1000)\n"
    assert run_stdio_tests(spam, [""], ["x"], max_output_bytes=1 << 16, timeout=2) == [False]


def test_run_many_keeps_order_and_one_crash_does_not_affect_others():
    jobs = [
        FunctionJob(ADD, ADD_TESTS),
        FunctionJob("import os\nos._exit(1)", ["assert True"]),
        FunctionJob("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)", ["assert True"]),
        StdioJob("print(input()[::-1])", ["abc", "xy"], ["cba", "xx"]),
        FunctionJob("def f(n):\n    return f(n + 1)\nf(0)", ["assert True"]),
        FunctionJob(ADD, ["assert add(2, 3) == 5"]),
    ]
    assert run_many(jobs, workers=2) == [[True, True], [False], [False], [True, False], [False], [True]]


def test_run_many_rejects_malformed_jobs():
    with pytest.raises(ValueError, match="job 0: 2 stdio inputs but 1 outputs"):
        run_many([StdioJob("pass", ["a", "b"], ["a"])])
    with pytest.raises(TypeError, match="job 0: expected FunctionJob or StdioJob"):
        run_many(["print(1)"])


# ------------------------------------------------------------------------------------ isolation (hostile code)
def _host_processes_with(marker):
    """Host pids whose command line contains `marker` (zombies excluded)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def _gone_soon(marker, seconds=3.0):
    """True once no host process carries `marker` (SIGKILL delivery and reaping are asynchronous)."""
    deadline = time.monotonic() + seconds
    while _host_processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not _host_processes_with(marker)


def _marker():
    return f"{int.from_bytes(os.urandom(4), 'big')}.{os.getpid()}"  # a valid `sleep` duration


def test_namespaces_are_used_wherever_the_kernel_allows_them():
    if shutil.which("unshare") is None:
        pytest.skip("util-linux unshare is not installed")
    flags = "-mpnfiu" if os.geteuid() == 0 else "-rmpnfiu"
    works = subprocess.run(["unshare", flags, "true"], capture_output=True).returncode == 0
    assert sandbox.isolation() == (sandbox.NAMESPACES if works else sandbox.RLIMITS_ONLY)


def test_namespaces_work_with_the_python_installation_under_tmp(monkeypatch, tmp_path):
    # a checkout (and its venv) under /tmp is bound there read-only; /tmp cannot also be the scratch link
    if sandbox.isolation() != sandbox.NAMESPACES:
        pytest.skip("Linux namespaces unavailable: rlimits-only sandbox")
    under_tmp = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        visible = host._visible_paths
        monkeypatch.setattr(host, "_visible_paths", lambda: visible() + [str(under_tmp)])
        code = ("import os, tempfile\nopen('/tmp/b.txt', 'w').write('y')\n"
                "print(tempfile.gettempdir() == os.getcwd(), os.path.isdir(%r), open('b.txt').read())" % str(under_tmp))
        assert run_stdio_tests(code, [""], ["True True y"]) == [True]  # /tmp is still the writable scratch
    finally:
        under_tmp.rmdir()


needs_namespaces = pytest.mark.skipif(sandbox.isolation() != sandbox.NAMESPACES,
                                      reason="Linux namespaces unavailable: rlimits-only sandbox")


@needs_namespaces
@pytest.mark.parametrize("attack, survives", [
    ("os.kill(os.getppid(), signal.SIGKILL)", True), ("os.kill(1, signal.SIGKILL)", True),
    ("os.kill(-1, signal.SIGKILL)", True), ("os.killpg(0, signal.SIGKILL)", False),  # its own group only
])
def test_killing_the_parent_or_the_group_hurts_nobody_outside(attack, survives):
    attempt = f"import os, signal\ntry:\n    {attack}\nexcept OSError:\n    pass\n"
    code = "def add(a, b):\n    return a - b\n" + attempt
    assert run_function_tests(code, ADD_TESTS) == [False, survives]  # and this process, the evaluator, lives
    assert run_stdio_tests("print(input())\n" + attempt, ["x"], ["x"]) == [survives]


@needs_namespaces
def test_children_and_setsid_escapees_die_with_the_run():
    marker = _marker()
    code = (
        "import subprocess\n"
        f"a = subprocess.Popen(['sleep', '{marker}'])\n"
        f"b = subprocess.Popen(['sleep', '{marker}'], start_new_session=True)\n"
        f"c = subprocess.Popen(['setsid', 'sleep', '{marker}'])\n"
        "def started():\n    return all(p.poll() is None for p in (a, b))\n"
    )
    assert run_function_tests(code, ["assert started()"]) == [True]
    assert _gone_soon(marker)
    stdio = f"import subprocess\nsubprocess.Popen(['setsid', 'sleep', '{marker}'])\nprint('ok')\n"
    assert run_stdio_tests(stdio, [""], ["ok"]) == [True]
    assert _gone_soon(marker)


@needs_namespaces
def test_process_limit_then_a_fork_bomb():
    # Bounded first: sleeping children until fork fails. The launcher and init count too in a user
    # namespace (normal user); as root the code has a host uid of its own.
    counter = (
        "import os, time\nn = 0\nfor _ in range(40):\n    try:\n        pid = os.fork()\n"
        "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n"
        "    n += 1\ndef spawned():\n    return n\n"
    )
    expected = 8 - (1 if os.geteuid() == 0 else 3)
    assert run_function_tests(counter, [f"assert spawned() == {expected}"], max_processes=8) == [True]
    start = time.monotonic()
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    assert run_function_tests(bomb, ["assert True"], timeout=0.5, max_processes=16) == [False]
    assert time.monotonic() - start < 0.5 + sandbox.STARTUP_SLACK_S + 2.0


@needs_namespaces
def test_no_socket_reaches_the_host(tmp_path):
    listeners = {}
    for name, family, address in [("path", socket.AF_UNIX, str(tmp_path / "host.sock")),
                                  ("abstract", socket.AF_UNIX, f"\0t3d-sandbox-test-{os.getpid()}"),
                                  ("tcp", socket.AF_INET, ("127.0.0.1", 0))]:
        listener = socket.socket(family)
        listener.bind(address)
        listener.listen()
        listener.setblocking(False)
        listeners[name] = (listener, listener.getsockname())
    code = (
        "import socket\n"
        "def attempt(family, address):\n"
        "    s = socket.socket(getattr(socket, family))\n"
        "    s.settimeout(1)\n"
        "    s.connect(tuple(address) if isinstance(address, list) else address)\n"
        "    return True\n"
    )
    tests = [f"assert attempt('AF_UNIX', {listeners['path'][1]!r})",
             f"assert attempt('AF_UNIX', {listeners['abstract'][1]!r})",
             f"assert attempt('AF_INET', {list(listeners['tcp'][1])!r})"]
    assert run_function_tests(code, tests) == [False, False, False]
    for listener, _ in listeners.values():
        with pytest.raises(BlockingIOError):  # nobody connected
            listener.accept()
        listener.close()


@needs_namespaces
def test_host_files_are_neither_readable_nor_writable(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2")
    marker = _marker()
    outside = [tmp_path / "escaped.txt", f"/tmp/t3d-escaped-{marker}", os.path.expanduser("~/t3d-escaped")]
    code = (
        "import os\n"
        f"def leak():\n    return open({str(secret)!r}).read()\n"
        f"def escape(path):\n    open(path, 'w').write('x')\n    return True\n"
        "def scratch():\n"
        "    open('a.txt', 'w').write('x')\n    open('/tmp/b.txt', 'w').write('y')\n"
        "    return open('a.txt').read() + open('/tmp/b.txt').read()\n"
    )
    tests = ["assert leak() == 'hunter2'", *[f"assert escape({str(p)!r})" for p in outside],
             "assert scratch() == 'xy'"]
    assert run_function_tests(code, tests) == [False, False, True, False, True]  # /tmp is the private scratch
    assert not any(os.path.exists(p) for p in outside)
    assert not os.path.exists("/tmp/b.txt") or open("/tmp/b.txt").read() != "y"


@needs_namespaces
def test_file_bombs_hit_the_file_size_and_scratch_limits():
    code = (
        "def big():\n    with open('big', 'wb') as f:\n        for _ in range(16):\n"
        "            f.write(b'x' * (1 << 20))\n    return 16\n"
        "def many():\n    for i in range(100):\n        with open(f'f{i}', 'wb') as f:\n"
        "            f.write(b'x' * (1 << 20))\n    return 100\n"
    )
    tests = ["assert big() == 16", "assert many() == 100"]
    assert run_function_tests(code, tests, max_output_bytes=4 << 20) == [False, False]
    assert run_function_tests(code, tests, max_output_bytes=32 << 20) == [True, False]  # 64 MiB scratch


FORGERIES = {
    "frames and fds": (
        "import os, sys\n"
        "for depth in range(1, 50):\n"
        "    try:\n        frame = sys._getframe(depth)\n    except ValueError:\n        break\n"
        "    for scope in (frame.f_locals, frame.f_globals):\n"
        "        for value in list(scope.values()):\n"
        "            if type(value) is int and 0 <= value < 1024:\n"
        "                try:\n                    os.write(value, b'0 1\\n1 1\\n')\n"
        "                except OSError:\n                    pass\n"
        "for fd in range(1024):\n"
        "    try:\n        os.write(fd, b'0 1\\n1 1\\n')\n    except OSError:\n        pass\n"
        "os._exit(0)\n"
    ),
    "gc objects": (
        "import gc, io, os\n"
        "for obj in gc.get_objects():\n"
        "    if isinstance(obj, (io.IOBase,)):\n"
        "        try:\n            obj.write(b'0 1\\n1 1\\n')\n            obj.flush()\n"
        "        except Exception:\n            pass\n"
        "    if isinstance(obj, dict) and 'tests' in obj:\n"
        "        obj['tests'] = ['pass', 'pass']\n"
    ),
    "other processes' descriptors": (
        "import os\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    for fd in range(8):\n"
        "        try:\n"
        "            with open(f'/proc/{pid}/fd/{fd}', 'wb') as f:\n                f.write(b'0 1\\n1 1\\n')\n"
        "        except OSError:\n            pass\n"
    ),
    "audit hook": (
        "import os, sys\n"
        "def hook(event, args):\n"
        "    for fd in range(3, 64):\n"
        "        try:\n            os.write(fd, b'0 1\\n1 1\\n')\n        except OSError:\n            pass\n"
        "sys.addaudithook(hook)\n"
    ),
    "__eq__ always True": (
        "class Anything:\n    def __eq__(self, other):\n        return True\n    __hash__ = object.__hash__\n"
        "def add(a, b):\n    return Anything()\n"
    ),
    "shadowing builtins": "import cmath as math\ndef sorted(x):\n    return [1, 2]\n"
                          "def abs(x):\n    return 0\n"
                          "def add(a, b):\n    return complex(2, 1e-12) if a == b == 1 else a - b\n",
    "subclass of a plain type": "class Three(int):\n    def __eq__(self, other):\n        return True\n"
                                "def add(a, b):\n    return Three(7)\n",
}


@needs_namespaces  # without them the /proc attack would write into this user's other processes
@pytest.mark.parametrize("name", FORGERIES)
def test_forged_passes_fail(name):
    code = FORGERIES[name] + ("" if "def add" in FORGERIES[name] else "def add(a, b):\n    return 'wrong'\n")
    tests = ["assert add(1, 2) == 3", "assert abs(add(2, 2) - 4) < 1e-9", "assert sorted([add(0, 1), 2]) == [1, 2]",
             "assert math.isclose(add(1, 1), 2)"]
    assert run_function_tests(code, tests) == [False] * 4


# ------------------------------------------------------------------------------------ proxies and the codec
def test_calls_cross_as_plain_data_with_exceptions_and_mutations():
    code = (
        "import math\n"
        "LIMIT = {'a': (1, 2.5)}\n"
        "def push(xs, d):\n    xs.append(len(xs))\n    d['n'] = 1\n"
        "def fail(kind):\n    raise {'value': ValueError, 'key': KeyError}[kind]('bad')\n"
        "def leave():\n    raise SystemExit(0)\n"
        "def special():\n    return float('inf'), float('nan'), -0.0, 3 + 4j, 2 ** 100, b'\\x00', frozenset({1})\n"
        "def lazy():\n    yield 1\n"
    )
    tests = [
        "xs, d = [0], {}\npush(xs, d)\nassert xs == [0, 1] and d == {'n': 1}",
        "try:\n    fail('value')\nexcept ValueError as err:\n    assert str(err) == 'bad'\n"
        "else:\n    raise AssertionError",
        "try:\n    fail('key')\nexcept KeyError:\n    pass",
        "try:\n    leave()\nexcept Exception:\n    pass",  # an exit cannot be swallowed into a pass
        "a, b, z, c, big, raw, f = special()\n"
        "assert a == math.inf and math.isnan(b) and math.copysign(1, z) == -1 and c == 3 + 4j\n"
        "assert big == 2 ** 100 and raw == b'\\x00' and f == frozenset({1}) and LIMIT == {'a': (1, 2.5)}",
        "assert list(lazy()) == [1]",  # a generator is not plain data: documented limitation
        "assert push(lambda: 0, {}) is None",  # neither is a callable argument
        "assert math.sqrt(4) == 2",  # the solution's imports are visible
    ]
    assert run_function_tests(code, tests) == [True, True, True, False, True, False, False, True]


def test_subclasses_of_plain_types_and_numpy_scalars_cross_as_their_plain_value():
    code = (
        "import collections, enum\nimport numpy as np\n"
        "Point = collections.namedtuple('Point', 'x y')\n"
        "class Colour(enum.IntEnum):\n    RED = 1\n"
        "def counts(s):\n    return collections.Counter(s)\n"
        "def point():\n    return Point(1, 2)\n"
        "def red():\n    return Colour.RED\n"
        "def scalars():\n    return np.int64(3), np.float64(0.5), np.bool_(True)\n"
        "def array():\n    return np.arange(3)\n"
    )
    tests = ["assert counts('aab') == {'a': 2, 'b': 1} and type(counts('a')) is dict",
             "assert point() == (1, 2) and type(point()) is tuple", "assert red() == 1",
             "a, b, c = scalars()\nassert (a, b, c) == (3, 0.5, True) and type(a) is int and type(c) is bool",
             "assert list(array()) == [0, 1, 2]"]  # an array is not plain data
    assert run_function_tests(code, tests, timeout=10) == [True, True, True, True, False]


def test_a_dead_solution_fails_the_remaining_tests_quickly():
    code = "import os\ndef add(a, b):\n    if a < 0:\n        os._exit(0)\n    return a + b\n"
    tests = ["assert add(1, 2) == 3", "add(-1, 0)", "assert add(2, 2) == 4"]
    start = time.monotonic()
    assert run_function_tests(code, tests, timeout=5) == [True, False, False]
    assert time.monotonic() - start < 3


def test_codec_round_trips_plain_data_exactly():
    encode, decode = codec.encode, codec.decode
    value = [None, True, False, 0, -1, 2 ** 200, -(2 ** 64), 1.5, float("inf"), -0.0, 1 + 2j, "é\ud800", b"\x00\xff",
             (1, (2,)), {1: "a", (1, "b"): [set(), frozenset({3})]}, [[[]]], ""]
    back = decode(encode(value))
    assert back == value and repr(back) == repr(value)
    assert [type(x) for x in back] == [type(x) for x in value]
    assert str(decode(encode(float("nan")))) == "nan"
    assert encode(True) == b"T" and encode(-1) == b"i\x01\x00\x00\x00\xff" and encode([None]) == b"l\x01\x00\x00\x00N"


@pytest.mark.parametrize("data, message", [
    (b"i\x05\x00\x00\x00\x01", "length past the end"), (b"NN", "trailing bytes"), (b"q", "unknown tag"),
    (b"l\x01\x00\x00\x00" * 200 + b"N", "too deeply nested"), (b"S\x01\x00\x00\x00l\x00\x00\x00\x00", "malformed"),
    (b"s\x01\x00\x00\x00\xff", "malformed"), (b"f\x00", "malformed"), (b"", "unknown tag"),
])
def test_codec_rejects_malformed_messages(data, message):
    with pytest.raises(codec.CodecError, match=message):
        codec.decode(data)


@pytest.mark.parametrize("value", [object(), [1, object()], range(3), print, {1: iter([])}])
def test_codec_refuses_objects(value):
    with pytest.raises(codec.CodecError, match="is not plain data"):
        codec.encode(value)


# ------------------------------------------------------------------------------------------------- fallback
def test_fallback_without_namespaces_still_grades_and_is_loud(monkeypatch, caplog, tmp_path):
    # A copy of the launcher whose namespace set-up fails the way a kernel without user namespaces makes it fail.
    runtime = tmp_path / "runtime"
    shutil.copytree(host.RUNTIME_DIR, runtime, ignore=shutil.ignore_patterns("__pycache__"))
    confine = (runtime / "confine.py").read_text()
    broken = confine.replace(
        "def enter_sandbox(job, native=None):\n",
        "def enter_sandbox(job, native=None):\n    if job['isolate']:\n"
        "        os.write(2, b'sandbox set-up failed: PermissionError: no user namespaces\\n')\n"
        "        os._exit(SETUP_FAILED)\n")
    assert broken != confine
    (runtime / "confine.py").write_text(broken)
    monkeypatch.setattr(host, "RUNTIME_DIR", str(runtime))
    with caplog.at_level("WARNING", logger="t3d.eval.sandbox.host"):
        assert host.isolation.__wrapped__() == sandbox.RLIMITS_ONLY
    assert "rlimits only" in caplog.text and "no user namespaces" in caplog.text
    monkeypatch.setattr(host, "isolation", lambda: sandbox.RLIMITS_ONLY)
    assert run_function_tests(ADD, ADD_TESTS + ["assert add(1, 1) == 3"]) == [True, True, False]
    assert run_function_tests("import os\nos._exit(0)", ADD_TESTS) == [False, False]
    assert run_stdio_tests("print(int(input()) + 1)", ["1", "2"], ["2", "4"]) == [True, False]


def test_the_launcher_imports_only_the_standard_library():
    # It starts as a bare interpreter for every job: nothing heavy (torch, numpy, this package's parent side).
    probe = ("import sys\nbefore = set(sys.modules)\n" + host._BOOTSTRAP.replace("main(int(sys.argv[2]))\n", "")
             + "print(sorted(set(sys.modules) - before))\n")
    out = subprocess.run([*host.launch_command(0)[:4], probe, host.RUNTIME_DIR], capture_output=True, text=True,
                         check=True).stdout
    loaded = eval(out)
    ours = {name for name in loaded if name.startswith("t3d_sandbox_runtime")}
    assert ours == {"t3d_sandbox_runtime", "t3d_sandbox_runtime.child", "t3d_sandbox_runtime.codec",
                    "t3d_sandbox_runtime.confine"}
    assert not [name for name in loaded if name.split(".")[0] in ("t3d", "numpy", "torch", "transformers")]
