"""Training's own outputs are safe: one run per run directory at a time, a resume state never runs pickled code,
and a resume that finds its metrics gone says so."""
import json
import pickle

from tests.test_bad_inputs_train import (  # noqa: F401  (fixtures)
    RUN, finished_run, isolated, one_error_line, records, run_copy, snapshot, t3d_argv, train,
)
from t3d.common.io import OutputLock
from t3d.train import checkpoints as ck


def test_a_second_run_on_a_locked_run_directory_is_refused_and_changes_nothing(run_copy, tiny_dir, capsys, isolated):
    base, data, out = run_copy
    before = snapshot(out)
    with OutputLock(out / RUN):  # another run holds it (this process stands in for it)
        assert train(t3d_argv(data, out, tiny_dir)) == 2
    line = one_error_line(capsys.readouterr().err, out / RUN)
    assert "is in use by another run" in line
    assert snapshot(out) == before


class Forged:
    """Unpickling this runs code: what a tampered resume state would do."""

    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['T3D_FORGED_MARK'], 'w').write('ran')",))


def test_a_forged_resume_state_is_refused_without_running_its_code(run_copy, tiny_dir, capsys, isolated, monkeypatch,
                                                                  tmp_path):
    base, data, out = run_copy
    mark = tmp_path / "pwned"
    monkeypatch.setenv("T3D_FORGED_MARK", str(mark))
    state = out / RUN / "state" / "step-2"
    manifest = json.loads((state / ck.MANIFEST).read_text())
    with open(state / ck.OBJECTS, "wb") as f:
        pickle.dump([Forged()], f)
    ck.write_manifest(state, manifest["fingerprint"], manifest["step"])  # checksums that match the forged file
    assert train(t3d_argv(data, out, tiny_dir)) == 2
    line = one_error_line(capsys.readouterr().err, state / ck.OBJECTS)
    assert "cannot load" in line
    assert not mark.exists()


def test_a_resume_without_its_metrics_says_what_is_missing(run_copy, tiny_dir, capsys, isolated):
    base, data, out = run_copy
    (out / RUN / "metrics.jsonl").unlink()
    assert train(t3d_argv(data, out, tiny_dir)) == 0
    assert (f"note: {out / RUN / 'metrics.jsonl'} is missing or empty: the metrics of steps 1-2 are lost; "
            "this run's file starts at step 3") in capsys.readouterr().out
