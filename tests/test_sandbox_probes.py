"""The hostile probes of tests/sandbox_probes.py against the sandbox: no probe passes a single test while the
honest answers pass; and each leak probe does pass where the place it reads holds the tests (outside any
sandbox), so that its failing in the sandbox means the place holds nothing, not that the probe is blind."""
import os

import pytest

from sandbox_probes import HONEST, NOT_SELF_CHECKED, leaky_run, probes, item_tests
from t3d.eval import sandbox

needs_namespaces = pytest.mark.skipif(sandbox.isolation() != sandbox.NAMESPACES,
                                      reason="Linux namespaces unavailable: rlimits-only sandbox")


def _job(kind, code):
    tests, inputs, outputs = item_tests(kind)
    if tests is None:
        return sandbox.StdioJob(code, inputs, outputs, timeout=2)
    return sandbox.FunctionJob(code, tests, timeout=2)


@needs_namespaces  # without them the sandbox stops accidents, not these attacks
def test_no_probe_passes_any_test_and_the_honest_answers_pass():
    items = {**HONEST, **probes()}
    results = dict(zip(items, sandbox.run_many([_job(*item) for item in items.values()], workers=2)))
    assert {name for name, passed in results.items() if any(passed)} == set(HONEST)
    assert all(all(results[name]) for name in HONEST)


def _may_read_the_parent():
    """Reading a parent's memory needs ptrace rights over it: root, or Yama's ptrace_scope 0."""
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            scope = int(f.read())
    except (OSError, ValueError):
        scope = 0
    return os.geteuid() == 0 or scope == 0


PARENT_MEMORY = {"parent memory", "parent memory via process_vm_readv", "ptrace the parent"}
LEAK_PROBES = [name for name, (kind, _) in probes().items()
               if kind != "add" and name.split(": ", 1)[1] not in NOT_SELF_CHECKED]


@pytest.mark.slow
@pytest.mark.parametrize("name", LEAK_PROBES)
def test_each_leak_probe_passes_where_its_place_holds_the_tests(name, tmp_path):
    if name.split(": ", 1)[1] in PARENT_MEMORY and not _may_read_the_parent():
        pytest.skip("no ptrace rights over the parent here")
    assert leaky_run(*probes()[name], tmp_path) == "true"


def test_the_probe_set_is_large():
    kinds = [kind for kind, _ in probes().values()]
    assert len(kinds) >= 60 and {"add", "f", "stdio"} <= set(kinds)
