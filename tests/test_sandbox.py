"""Sandbox: correct code passes, wrong code fails, and no exit/kill/forgery/timeout/memory trick passes."""
import os
import time

import pytest

from utils import sandbox
from utils.sandbox import FunctionJob, StdioJob, run_function_tests, run_many, run_stdio_tests

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
    assert run_function_tests("x = bytearray(20 * 1024 * 1024)", ["assert len(x) == 20 * 1024 * 1024"],
                              memory_mb=256) == [True]


def test_network_is_refused():
    code = "import socket\ns = socket.socket()\n"
    assert run_function_tests(code, ["assert True"]) == [False]
    assert run_function_tests("import _socket\n_socket.socket()\n", ["assert True"]) == [False]


def test_network_is_refused_by_the_bootstrap_alone(monkeypatch):
    monkeypatch.setattr(sandbox, "network_namespace_available", lambda: False)
    assert run_function_tests("import socket\nsocket.socket()\n", ["assert True"]) == [False]
    assert run_function_tests(ADD, ADD_TESTS) == [True, True]


def test_working_directory_is_private_and_removed():
    code = "import os\nopen('scratch.txt', 'w').write('x')\nprint(os.getcwd())\n"
    spec = sandbox._spec(StdioJob(code, [""], [""]), {"mode": "stdio", "code": code})
    returncode, output, _ = sandbox._execute(spec, stdin_text="")
    cwd = output.decode().strip()
    assert returncode == 0 and os.path.basename(cwd).startswith("t3d-sandbox-")
    assert not os.path.exists(cwd)


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, only not yet reaped
    except FileNotFoundError:
        return False


def test_background_children_are_killed():
    code = "import subprocess\np = subprocess.Popen(['sleep', '30'])\nprint(p.pid)\n"
    spec = sandbox._spec(StdioJob(code, [""], [""]), {"mode": "stdio", "code": code})
    returncode, output, timed_out = sandbox._execute(spec, stdin_text="")
    assert returncode == 0 and not timed_out
    pid = int(output.decode().split()[-1])
    deadline = time.monotonic() + 2.0  # SIGKILL delivery is asynchronous
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _alive(pid)


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
