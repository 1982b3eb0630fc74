"""Run untrusted generated Python against tests, one fresh subprocess per (response[, stdio case]).

Each run: `python -I` (isolated: no PYTHON* env, no user site, script dir not on sys.path) in a new,
private temporary working directory that is deleted afterwards; stdin is /dev/null (function tests) or the
test input; its own session/process group, which is SIGKILLed when the run ends (timeout or not), so
stray children die too; rlimits set in `preexec_fn` before exec: address space (`memory_mb`), CPU time,
file size (caps stdout and any file it writes), no core dumps.

Network (best effort, two layers): if `unshare -rn` works on this machine the process runs in a new user
+ network namespace (only a down loopback: no route anywhere); in every case the bootstrap replaces
`socket.socket` / `_socket.socket` with a class that refuses to be created. The namespace is the real
barrier; the monkeypatch alone can be undone by deliberate code (e.g. ctypes).

Function tests cannot be passed by leaving early: the bootstrap runs the solution, then each test, and
only after a test has run writes "<nonce> <index> <0|1>" to a private copy of the stdout descriptor (the
solution's own stdout/stderr go to /dev/null). The nonce is random per run and reaches the child in a job
file that the bootstrap deletes before running any generated code. `sys.exit()` / `raise SystemExit` in
the solution or a test is caught and fails it; `os._exit()`, killing itself, a crash, a timeout or the
memory limit leave the remaining tests without a marker, so they fail; printed fake markers lack the nonce.
Residual risks: code that deliberately inspects the bootstrap's frames in memory could find the nonce; the
process keeps the caller's uid, so files outside the working directory are as writable as for the caller
(no filesystem isolation; run evaluation as an unprivileged user for that); a process that calls setsid()
leaves the killed process group. This guards against accidents and against passing by exit tricks, not
against a targeted escape.

Stdio tests follow judges' rules: a case passes iff the process exits with status 0 within the time limit
and its whitespace-normalised stdout equals the whitespace-normalised expected output (so `exit()` after
printing the right answer is fine; an uncaught exception is not).
"""
import json
import logging
import os
import resource
import secrets
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

DEFAULT_TIMEOUT_S = 3.0  # user-code wall time per process
STARTUP_SLACK_S = 1.0  # added to the wall limit for interpreter start-up, so slow starts are not timeouts
DEFAULT_MEMORY_MB = 1024  # address-space limit per process
DEFAULT_MAX_OUTPUT_BYTES = 8 << 20  # per written file, stdout included (RLIMIT_FSIZE)

# Runs inside the child. Kept free of names the solution could collide with: everything is local to main().
_BOOTSTRAP = r'''
import builtins, json, os, sys

def _deny_network():
    import _socket, socket

    class _NoSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            raise OSError("network access is disabled in the sandbox")

    socket.socket = _NoSocket
    _socket.socket = _NoSocket
    socket.socketpair = socket.create_connection = socket.create_server = _NoSocket

def main():
    path = sys.argv[1]
    with open(path, encoding="utf-8") as f:
        job = json.load(f)
    os.unlink(path)
    _deny_network()
    code = compile(job["code"], "<solution>", "exec")
    if job["mode"] == "stdio":
        exec(code, {"__name__": "__main__", "__builtins__": builtins})
        return
    nonce, tests, setup = job.pop("nonce"), job["tests"], job["setup"]
    write, report = os.write, os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    # Bound before the solution runs, so patching builtins (e.g. `builtins.exec = print`) cannot skip tests.
    run, build, number, Failure = builtins.exec, builtins.compile, builtins.enumerate, builtins.BaseException
    namespace = {"__name__": "solution", "__builtins__": builtins}
    try:
        run(code, namespace)
        if setup:
            run(build(setup, "<setup>", "exec"), namespace)
    except Failure:  # SystemExit included: a solution that exits has not passed anything
        return
    for index, test in number(tests):
        try:
            run(build(test, "<test %d>" % index, "exec"), namespace)
            passed = 1
        except Failure:
            passed = 0
        write(report, ("%s %d %d\n" % (nonce, index, passed)).encode())

main()
'''


@dataclass
class FunctionJob:
    """Run `code`, then `setup`, then each statement block of `tests` in one namespace (MBPP/HumanEval)."""

    code: str
    tests: list
    setup: str = ""
    timeout: float = DEFAULT_TIMEOUT_S
    memory_mb: int = DEFAULT_MEMORY_MB
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES


@dataclass
class StdioJob:
    """Run `code` as __main__ once per case with `inputs[i]` on stdin; compare stdout with `outputs[i]`."""

    code: str
    inputs: list
    outputs: list
    timeout: float = DEFAULT_TIMEOUT_S
    memory_mb: int = DEFAULT_MEMORY_MB
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES


@lru_cache(maxsize=1)
def network_namespace_available():
    """Whether `unshare -rn` (new user + network namespace) works here; probed once per process."""
    if shutil.which("unshare") is None:
        return False
    try:
        probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return probe.returncode == 0


def _limit_resources(memory_bytes, cpu_seconds, file_bytes):
    """preexec_fn: only setrlimit calls (async-signal-safe enough to run between fork and exec)."""

    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _wait_then_kill_group(proc, deadline):
    """Wait for the child until `deadline`; then SIGKILL its whole process group and reap it.

    The child is waited for with WNOWAIT, so its (zombie) pid still holds the group id when the group is
    killed: no risk of signalling a recycled process group. Returns True if the deadline was hit.
    """
    delay, timed_out = 0.001, False
    while True:
        try:
            if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                break
        except ChildProcessError:
            break
        if time.monotonic() >= deadline:
            timed_out = True
            break
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    return timed_out


def _execute(spec, *, stdin_text=None):
    """One sandboxed process. Returns (returncode, stdout bytes (capped), timed_out)."""
    workdir = tempfile.mkdtemp(prefix="t3d-sandbox-")
    try:
        job_path = os.path.join(workdir, ".job.json")
        with open(job_path, "w", encoding="utf-8") as f:
            json.dump(spec["payload"], f)
        command = [sys.executable, "-I", "-c", _BOOTSTRAP, job_path]
        if network_namespace_available():
            command = ["unshare", "-rn", *command]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": workdir,
            "TMPDIR": workdir,
            "LANG": "C.UTF-8",
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        timeout = float(spec["timeout"])
        limits = _limit_resources(
            int(spec["memory_mb"]) << 20, int(timeout + STARTUP_SLACK_S) + 1, int(spec["max_output_bytes"])
        )
        with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stdin:
            if stdin_text is not None:
                stdin.write(stdin_text.encode("utf-8", errors="surrogatepass"))
                stdin.seek(0)
            proc = subprocess.Popen(
                command,
                cwd=workdir,
                env=env,
                stdin=stdin if stdin_text is not None else subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.DEVNULL,
                preexec_fn=limits,
                start_new_session=True,
                close_fds=True,
            )
            timed_out = _wait_then_kill_group(proc, time.monotonic() + timeout + STARTUP_SLACK_S)
            stdout.seek(0)
            output = stdout.read(int(spec["max_output_bytes"]))
        return proc.returncode, output, timed_out
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _parse_markers(output, nonce, n_tests):
    passed = [False] * n_tests
    prefix = nonce.encode() + b" "
    for line in output.splitlines():
        if not line.startswith(prefix):
            continue
        parts = line[len(prefix) :].split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1] in (b"0", b"1"):
            index = int(parts[0])
            if index < n_tests:
                passed[index] = parts[1] == b"1"
    return passed


def _normalise(text):
    return " ".join(text.split())


def _run_function(job):
    nonce = secrets.token_hex(16)
    payload = {"mode": "function", "code": job.code, "setup": job.setup or "", "tests": list(job.tests), "nonce": nonce}
    _, output, _ = _execute(_spec(job, payload))
    return _parse_markers(output, nonce, len(job.tests))


def _run_stdio_case(job, case):
    payload = {"mode": "stdio", "code": job.code}
    returncode, output, timed_out = _execute(_spec(job, payload), stdin_text=str(job.inputs[case]))
    if timed_out or returncode != 0:
        return False
    return _normalise(output.decode("utf-8", errors="replace")) == _normalise(str(job.outputs[case]))


def _spec(job, payload):
    return {"payload": payload, "timeout": job.timeout, "memory_mb": job.memory_mb, "max_output_bytes": job.max_output_bytes}


def _guarded(fn, *args, failed):
    """A sandbox-side failure (spawn error, bad input) fails this unit only, never the whole run."""
    try:
        return fn(*args)
    except Exception as err:
        logger.warning("sandbox run failed: %s: %s", type(err).__name__, err)
        return failed


def run_many(jobs, workers=None):
    """Run FunctionJob / StdioJob items in parallel (thread pool of subprocesses; stdio cases are separate
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
                       max_output_bytes=DEFAULT_MAX_OUTPUT_BYTES):
    """Per test of `tests`: did it run without raising after `code` (and `setup`)? One process."""
    return run_many([FunctionJob(code, list(tests), setup, timeout, memory_mb, max_output_bytes)], workers=1)[0]


def run_stdio_tests(code, inputs, outputs, *, timeout=DEFAULT_TIMEOUT_S, memory_mb=DEFAULT_MEMORY_MB,
                    max_output_bytes=DEFAULT_MAX_OUTPUT_BYTES, workers=None):
    """Per case: exit status 0 in time and whitespace-normalised stdout equal to the expected output."""
    return run_many([StdioJob(code, list(inputs), list(outputs), timeout, memory_mb, max_output_bytes)], workers)[0]
