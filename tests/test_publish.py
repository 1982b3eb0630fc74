"""Export with a model card, and push_to_hub up to the network boundary (huggingface_hub's HfApi replaced)."""
import json
import shutil

import pytest

from t3d.common.errors import DataError
from t3d.common.paths import CHECKOUT
from t3d.model import publish
from t3d.model.checkpoint import load

TINY = CHECKOUT / "models" / "sdar-tiny"


@pytest.fixture
def trained(tmp_path):
    """A checkpoint as a trainer writes it: the weights plus the run's resolved config.yaml."""
    ckpt = tmp_path / "ckpt" / "optimized"
    shutil.copytree(TINY, ckpt)
    (ckpt / "config.yaml").write_text(
        "model:\n  pretrained_model: JetLM/SDAR-1.7B-Chat\ndataset:\n  optimization_data: /x/MATH_train_renamed.json\n"
        "training:\n  num_train_epochs: 30\n  beta: 0.1\n  lambda_ddo: 1.0\n  lambda_path: 0.2\n  block_size: 4\n")
    return ckpt


def test_export_writes_a_standalone_copy_with_a_model_card(trained, tmp_path):
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps({"rows": [{"checkpoint": "t3d", "dataset": "MATH500", "setting": "S=1",
                                           "accuracy": 0.5, "tokens_per_forward": 3.25, "mean_nfe": 12.0}]}))
    out = publish.export(trained, tmp_path / "export", [sweep])
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n") and "base_model: JetLM/SDAR-1.7B-Chat" in card
    assert "| training.beta | 0.1 |" in card and "| training.num_train_epochs | 30 |" in card
    assert "| t3d | MATH500 | S=1 | 0.5000 | 3.25 | 12.0 |" in card
    assert "Training data: `MATH_train_renamed.json`" in card
    assert not (out / "config.yaml").exists() and (out / "modeling_sdar.py").is_file()
    assert not (out / "modeling_sdar.py").is_symlink()  # a real copy: the folder travels alone
    model, _, _ = load(str(out))
    assert sum(p.numel() for p in model.parameters()) > 0


def test_export_refuses_an_existing_folder_or_bad_eval_file_and_leaves_nothing(trained, tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(DataError, match="already exists"):
        publish.export(trained, tmp_path / "taken")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(DataError, match=r"bad.json: not valid JSON at line 1"):
        publish.export(trained, tmp_path / "new", [bad])
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".tmp-*"))


def test_push_to_hub_creates_the_repo_and_uploads_the_folder(trained, tmp_path, monkeypatch):
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls.append(("create", repo_id, private, exist_ok))

        def upload_folder(self, folder_path, repo_id, commit_message):
            calls.append(("upload", sorted(p.name for p in (tmp_path / "export").iterdir()), repo_id))
            return f"https://hub/{repo_id}/commit/1"

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert publish.main([str(trained), str(tmp_path / "export"), "--push-to-hub", "me/t3d-tiny", "--private"]) == 0
    assert calls[1] == ("create", "me/t3d-tiny", True, True)
    assert calls[2][0] == "upload" and "README.md" in calls[2][1] and "model.safetensors" in calls[2][1]


def test_a_failed_push_is_one_line_and_keeps_the_export(trained, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    class Offline:
        def __init__(self, token=None):
            pass

        def create_repo(self, *a, **k):
            raise ConnectionError("hub unreachable")

    monkeypatch.setattr(huggingface_hub, "HfApi", Offline)
    assert publish.main([str(trained), str(tmp_path / "export"), "--push-to-hub", "me/x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not push" in err and "hub unreachable" in err
    assert (tmp_path / "export" / "README.md").is_file()
