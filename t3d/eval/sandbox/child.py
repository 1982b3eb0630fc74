"""The launcher: the sandboxed side of one job, started by the evaluator as a bare `python -I -S` (see
`host.launch_command`) that imports only this package's codec and confine modules and builtin modules.

Stdio jobs: the launcher confines itself and runs the code as __main__ with the case's stdin and stdout.
Function jobs: it forks two sibling sandboxes joined by two pipes, the solution's (`serve_solution`) and
the test process (`run_tests`), which writes the verdicts to the launcher's stdout.
"""
import builtins
import os
import sys

from . import codec, confine

MAX_GLOBAL_BYTES = 1 << 20  # larger plain-data globals of the solution are not shown to the tests


# ---------------------------------------------------------------------------------- the solution's process
def _builtin_exception_name(err):
    name = type(err).__name__
    return name if getattr(builtins, name, None) is type(err) else ""


def serve_solution(code, setup, requests, replies):
    """Run the solution (and setup), announce its top-level names, then answer calls until EOF."""
    namespace = {"__name__": "solution", "__builtins__": builtins}
    try:
        exec(compile(code, "<solution>", "exec"), namespace)
        if setup:
            exec(compile(setup, "<setup>", "exec"), namespace)
    except BaseException:  # SystemExit included: a solution that exits has not passed anything
        codec.send(replies, ("failed",))
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
                if len(codec.encode(value)) <= MAX_GLOBAL_BYTES:
                    values[name] = value
            except Exception:
                pass  # not plain data: invisible to the tests
    codec.send(replies, ("ready", callables, values, modules))
    while True:
        try:
            _, name, args, kwargs = codec.receive(requests)
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
            codec.send(replies, (kind, _builtin_exception_name(err), message))
            continue
        changed = [(where, value) for where, value in [*enumerate(args), *kwargs.items()]
                   if type(value) in (list, dict, set)]
        try:
            reply = codec.encode(("ok", result, changed))
        except Exception as err:
            reply = codec.encode(("unsupported", f"{name}() returned data the sandbox cannot pass back: {err}", ""))
        codec.send_encoded(replies, reply)


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


def run_tests(tests, setup, requests, replies, report):
    """Run setup and each test here, against proxies of the solution; write '<index> <0|1>' lines to
    `report`."""
    # Bound before any module the solution names is imported here, so that no import can skip the tests.
    run, build, number, write, Failure = exec, compile, enumerate, os.write, BaseException
    try:
        announcement = codec.receive(replies)
    except (EOFError, codec.CodecError):
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
                codec.send(requests, ("call", name, args, kwargs))
            except codec.CodecError as err:
                raise SolutionUnavailable(f"{name}(): arguments are not plain data ({err})") from None
            except OSError:
                broken.append("the solution's process is gone")
                raise SolutionUnavailable(broken[0]) from None
            try:
                reply = codec.receive(replies)
                kind = reply[0]
                if kind == "ok":
                    _, result, changed = reply
                    for where, value in changed:
                        _restore(args[where] if type(where) is int else kwargs[where], value)
                    return result
                _, exception_name, message = reply
            except (EOFError, OSError, codec.CodecError, ValueError, TypeError, IndexError, KeyError):
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
        if setup:
            run(build(setup, "<setup>", "exec"), namespace)
    except Failure:
        return
    for index, test in number(tests):
        try:
            run(build(test, "<test %d>" % index, "exec"), namespace)
            passed = 1
        except Failure:
            passed = 0
        write(report, b"%d %d\n" % (index, passed))


# ------------------------------------------------------------------------------------------------ launcher
def _run_stdio(job):
    """Judges' rules: the evaluator holds the expected output and reads the exit status and stdout."""
    confine.enter_sandbox(job)
    confine.only_fds(0, 1)
    exec(compile(job["code"], "<solution>", "exec"), {"__name__": "__main__", "__builtins__": builtins})


def main(job_fd):
    """Read the job from `job_fd` and run it.

    The job comes as two messages: the first holds the limits, paths, code and setup; the second, for
    function jobs only, the tests. The solution's side is forked between the two, so its process never
    held the tests in any frame, object, buffer or freed memory: all it could read about them is what the
    test process sends it (arguments). Stdio jobs have no second message: expected outputs stay with the
    evaluator."""
    job = codec.receive(job_fd)
    if job["role"] == "stdio":
        os.close(job_fd)
        _run_stdio(job)
        return
    # Function tests: two sibling sandboxes joined by two pipes; the verdicts go to our stdout.
    native = confine.load_libc() if sys.platform == "linux" else None  # loaded once, before the forks
    to_solution, to_tests = os.pipe(), os.pipe()
    if os.fork() == 0:
        os.close(job_fd)  # the tests arrive there next
        os.close(to_solution[1])  # each side sees EOF as soon as the other side's sandbox is gone
        os.close(to_tests[0])
        job["role"] = "solution"
        confine.enter_sandbox(job, native)
        confine.only_fds(to_solution[0], to_tests[1])
        serve_solution(job["code"], job["setup"], to_solution[0], to_tests[1])
        os._exit(0)
    try:
        tests = codec.receive(job_fd)
    except (EOFError, codec.CodecError):
        os._exit(confine.SETUP_FAILED)
    os.close(job_fd)
    tester = os.fork()
    if tester == 0:
        os.close(to_solution[0])
        os.close(to_tests[1])
        job["role"] = "tests"
        confine.enter_sandbox(job, native)
        report = os.dup(1)
        confine.only_fds(report, to_solution[1], to_tests[0])
        run_tests(tests, job["setup"], to_solution[1], to_tests[0], report)
        os._exit(0)
    for fd in (*to_solution, *to_tests):
        os.close(fd)
    os.waitpid(tester, 0)  # the test sandbox decides; the evaluator then kills the solution's
    os._exit(0)
