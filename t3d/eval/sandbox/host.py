"""The evaluator's side of the code sandbox: jobs, launching and killing sandboxes, reading verdicts.

See the package docstring for the design; `child` is what runs inside.
"""
import logging
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

from .codec import encode, send_encoded

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

# The launcher is this package's `child` module run in a bare interpreter (-I: no environment, user site or
# script directory; -S: no site-packages, fast start). The package is loaded from its directory under a
# name of its own, without running this package's __init__ (which imports this parent-side module).
RUNTIME_DIR = os.path.dirname(os.path.abspath(__file__))
_BOOTSTRAP = (
    "import sys\n"
    "runtime = type(sys)('t3d_sandbox_runtime')\n"
    "runtime.__path__ = [sys.argv[1]]\n"
    "sys.modules['t3d_sandbox_runtime'] = runtime\n"
    "from t3d_sandbox_runtime.child import main\n"
    "main(int(sys.argv[2]))\n"
)


def launch_command(job_fd):
    """argv of a launcher that reads its job from `job_fd`."""
    return [sys.executable, "-I", "-S", "-c", _BOOTSTRAP, RUNTIME_DIR, str(job_fd)]


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

    def __init__(self, spec, tests=None, *, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                 log_problems=True):
        """Launch the sandbox of `spec` (everything but the tests); `tests`: a function job's tests, sent
        as a second message, which the launcher reads only after forking the solution's side."""
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
                launch_command(job_read), cwd="/", env=env, stdin=stdin,
                stdout=stdout, stderr=self.errors, pass_fds=(job_read,), start_new_session=True,
            )
        except BaseException:
            os.close(job_write)
            self.cleanup()
            raise
        finally:
            os.close(job_read)
        try:
            send_encoded(job_write, encode(spec))
            if tests is not None:
                send_encoded(job_write, encode(list(tests)))
        except BrokenPipeError:
            pass  # the launcher died first; its status says so
        finally:
            os.close(job_write)

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
                     setup=job.setup or "")
    verdicts, verdicts_w = os.pipe()
    try:
        try:
            sandbox = _Sandbox(spec, [str(t) for t in job.tests], stdout=verdicts_w)
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
