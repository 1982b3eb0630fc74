"""rollout.attn_implementation reaches the model in eval and rollout, and the kernel that ran is recorded."""
import json

import pytest

from t3d.commands import evaluate


@pytest.mark.parametrize("requested, ran", [("auto", "sdpa"), ("flex_attention", "flex_attention"), ("eager", "eager")])
def test_eval_records_the_kernel_and_dtype_that_ran(requested, ran, tmp_path, capsys):
    evaluate([f"experiment.output_dir={tmp_path}", "evaluation.max_items=2", "rollout.max_token=16",
              f"rollout.attn_implementation={requested}"])
    (metrics,) = (tmp_path / "eval" / "results").rglob("metrics.json")
    recorded = json.loads(metrics.read_text())
    assert recorded["attn_implementation"] == ran and recorded["model_dtype"] == "float32"
    assert recorded["settings"]["rollout.attn_implementation"] == requested
    assert f"attention {ran}" in capsys.readouterr().out


def test_an_unknown_kernel_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        evaluate([f"experiment.output_dir={tmp_path}", "rollout.attn_implementation=fast"])
    assert stop.value.code == 2
    assert "rollout.attn_implementation must be one of auto, sdpa" in capsys.readouterr().err
