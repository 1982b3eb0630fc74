"""Run untrusted generated Python against tests so that it can neither hurt the evaluator nor fake a pass.

Threat model: the code is hostile. It must not signal, kill or outlive the evaluator, reach any socket,
read the user's files, write outside its own scratch space, exhaust the machine, or produce a passing
verdict other than by passing the tests.

Modules: `host` (the evaluator's side: jobs, launching, verdicts; what this package exports), `child` (the
launcher and the two sandboxed roles), `confine` (namespaces, root, uid, rlimits) and `codec` (plain data
over the pipes). `child`, `confine` and `codec` import only builtin modules and ctypes: they run in a bare
interpreter, loaded before the sandbox is entered, so nothing of this package needs to be visible inside it.

Isolation (mode "namespaces", the normal case on Linux): every sandbox starts from a small trusted launcher
(`python -I -S`, the `child` module) that enters new mount, PID, network, IPC and UTS namespaces
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

Verdicts are decided where the untrusted code cannot reach them, from tests its process never holds: a
function job reaches the launcher as two messages, the second holding the tests, and the launcher forks the
solution's side between the two (`child.main`), so no frame, object, buffer or freed memory of the
solution's process or its init ever held them; all it learns of them is the arguments of the calls. Function tests (MBPP `test_list`, HumanEval
`check(candidate)`) run in a second, separate sandbox (its own PID namespace, root and uid; both are forked
from one launcher): the trusted test process. The solution's top-level callables are proxies there that call
into the solution's sandbox over a pair of pipes; arguments, return values and exceptions cross as plain
data in a strict tagged binary encoding (`codec`; None, bool, int, float incl. inf/nan,
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
from .host import (
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_MAX_PROCESSES,
    DEFAULT_MEMORY_MB,
    DEFAULT_TIMEOUT_S,
    NAMESPACES,
    RLIMITS_ONLY,
    SANDBOX_DIR,
    SCRATCH_MB,
    STARTUP_SLACK_S,
    FunctionJob,
    StdioJob,
    isolation,
    run_function_tests,
    run_many,
    run_stdio_tests,
)

__all__ = [
    "DEFAULT_MAX_OUTPUT_BYTES", "DEFAULT_MAX_PROCESSES", "DEFAULT_MEMORY_MB", "DEFAULT_TIMEOUT_S", "NAMESPACES",
    "RLIMITS_ONLY", "SANDBOX_DIR", "SCRATCH_MB", "STARTUP_SLACK_S", "FunctionJob", "StdioJob", "isolation",
    "run_function_tests", "run_many", "run_stdio_tests",
]
