"""eval.py grading hostile code answers: the evaluator finishes and writes metrics, every hostile answer fails,
the honest ones pass in the same run, and nothing escapes (no surviving process, no file outside, no
connection).

eval.py runs as a subprocess (an attack that worked on it must not take pytest down) with a stand-in decoder
that answers each question with a fixed response. The answers are the probes of tests/sandbox_probes.py
(attacks on the evaluator and the verdict channel, and leak probes that pass iff they find the tests or
expected outputs) plus attacks on this test's own sockets and files. Each attack that could succeed silently
is written so that success defines a passing answer: an escape or a leak would show up as a pass.
"""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from sandbox_probes import ADD, HONEST, item_tests, probes
from t3d.eval import sandbox
from t3d.common.paths import CHECKOUT as REPO_ROOT

pytestmark = pytest.mark.skipif(sandbox.isolation() != sandbox.NAMESPACES,
                                reason="Linux namespaces unavailable: rlimits-only sandbox")

DRIVER = """
import json, os, runpy, sys
sys.path.insert(0, {repo!r})
import t3d.decode.rollout as rollout_mod
from t3d.model.checkpoint import load_tokenizer
from t3d.decode.decoder import DecodeOutput

answers = json.loads(open({answers!r}).read())
tokenizer = load_tokenizer({checkpoint!r})

def generate(model, prompts, cfg, **kw):  # the response of the question found in each prompt
    out = DecodeOutput(batch_forwards=1)
    for ids in prompts:
        text = tokenizer.decode(ids)
        response = next(answers[q] for q in answers if q in text)
        out.token_ids.append(tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
        out.step_maps.append(list(range(1, len(out.token_ids[-1]) + 1)))
        out.nfe.append(1)
        out.prefill_nfe.append(0)
        out.finished.append(True)
    return out

rollout_mod.generate = generate
sys.argv = ["eval.py", *sys.argv[1:]]
runpy.run_path(os.path.join({repo!r}, "eval.py"), run_name="__main__")
"""



def attacks(tmp_path, marker, listeners):
    """name -> (kind, solution code): the honest answers, the shared probes, and attacks on this test's own
    sockets, files and processes. Only the honest answers may pass."""
    secret, outside = tmp_path / "secret.txt", tmp_path / "escaped.txt"
    connect = "import socket\ns = socket.socket(socket.{})\ns.settimeout(1)\ns.connect({!r})\n"
    own = {
        "setsid escape": f"import subprocess\nsubprocess.Popen(['setsid', 'sleep', '{marker}'])\n"
                         f"subprocess.Popen(['sleep', '{marker}'], start_new_session=True)\n",
        "unix socket": connect.format("AF_UNIX", listeners["path"]) + ADD,
        "abstract socket": connect.format("AF_UNIX", listeners["abstract"]) + ADD,
        "tcp socket": connect.format("AF_INET", listeners["tcp"]) + ADD,
        "write outside (the test's directory)": f"open({str(outside)!r}, 'w').write('x')\n" + ADD,
        "read a host file": f"assert open({str(secret)!r}).read() == 'hunter2'\n" + ADD,
    }
    return {**HONEST, **probes(), **{name: ("add", code) for name, code in own.items()}}


def item(question, kind):
    tests, inputs, outputs = item_tests(kind)
    base = {"question": question, "prefix": "```python\n", "test_time_limit": 2}
    if tests is None:
        return {**base, "test_method": "stdio", "test_input": inputs, "test_output": outputs}
    return {**base, "test_method": "function", "test_list": tests}


@pytest.mark.slow
def test_eval_survives_hostile_code_and_only_the_honest_answer_passes(tmp_path, tiny_dir):
    marker = f"{int.from_bytes(os.urandom(4), 'big')}.{os.getpid()}"
    (tmp_path / "secret.txt").write_text("hunter2")
    sockets, listeners = [], {}
    for name, family, address in [("path", socket.AF_UNIX, str(tmp_path / "host.sock")),
                                  ("abstract", socket.AF_UNIX, f"\0t3d-eval-test-{os.getpid()}"),
                                  ("tcp", socket.AF_INET, ("127.0.0.1", 0))]:
        listener = socket.socket(family)
        listener.bind(address)
        listener.listen()
        listener.setblocking(False)
        sockets.append(listener)
        listeners[name] = listener.getsockname()
    codes = attacks(tmp_path, marker, listeners)
    questions = {name: f"Task {i}: {name}." for i, name in enumerate(codes)}
    # Function items' prompts end with the opening fence (their `prefix`); stdio answers open their own.
    answers = {questions[name]: ("```python\n" if kind == "stdio" else "") + code + "```"
               for name, (kind, code) in codes.items()}
    items = [item(questions[name], kind) for name, (kind, _) in codes.items()]
    (tmp_path / "code.json").write_text(json.dumps(items))
    (tmp_path / "answers.json").write_text(json.dumps(answers))
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(repo=str(REPO_ROOT), answers=str(tmp_path / "answers.json"),
                                    checkpoint=str(tiny_dir)))
    proc = subprocess.run(
        [sys.executable, str(driver), f"config={REPO_ROOT}/configs/eval.yaml", f"evaluation.checkpoint_path={tiny_dir}",
         f"evaluation.eval_dataset={tmp_path / 'code.json'}", "evaluation.data_type=code",
         f"experiment.output_dir={tmp_path / 'out'}", "rollout.max_token=8", "execute.num_chunk=2",
         "execute.memory_mb=256"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    [metrics_file] = (tmp_path / "out").rglob("metrics.json")
    run_dir = metrics_file.parent
    metrics = json.loads(metrics_file.read_text())
    records = [json.loads(line) for line in (run_dir / "items.jsonl").read_text().splitlines()]
    verdicts = {name: record["correct"] for name, record in zip(codes, records)}
    assert len(codes) - len(HONEST) >= 60
    assert verdicts == {name: name in HONEST for name in codes}
    assert metrics["accuracy"] == pytest.approx(len(HONEST) / len(codes))
    assert not (tmp_path / "escaped.txt").exists()
    deadline = time.monotonic() + 3  # SIGKILL delivery and reaping are asynchronous
    while _survivors(marker) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _survivors(marker)
    for listener in sockets:
        with pytest.raises(BlockingIOError):  # nobody connected
            listener.accept()
        listener.close()


def _survivors(marker):
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(pid)
        except OSError:
            pass
    return found
