"""Whole-model checks on every load: a checkpoint whose weights and config.json disagree, or whose weights are not
finite, is refused with one line naming the checkpoint and the first bad tensor or key (never a silent partial
load, never a traceback)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from t3d.model.checkpoint import CheckpointError, load, load_model
from t3d.model.sdar import SDARConfig, SDARForCausalLM

REPO = Path(__file__).resolve().parents[1]
SHAPE = dict(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8, max_position_embeddings=128)


@pytest.fixture
def ckpt(tiny_dir, tmp_path):
    """A 4-layer fp32 checkpoint with the tiny tokenizer; tests then damage its weights or config."""
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    SDARForCausalLM(SDARConfig(**SHAPE)).save_pretrained(tmp_path / "m")
    AutoTokenizer.from_pretrained(tiny_dir).save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def rewrite_weights(path, change):
    file = path / "model.safetensors"
    tensors = load_file(str(file))
    change(tensors)
    save_file(tensors, str(file), metadata={"format": "pt"})


def rewrite_config(path, **values):
    config = json.loads((path / "config.json").read_text())
    config.update(values)
    (path / "config.json").write_text(json.dumps(config))


def refused(path):
    with pytest.raises(CheckpointError) as err:
        load(str(path))
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    return message


def test_intact_checkpoint_loads(ckpt):
    model, _, _ = load(str(ckpt))
    assert model.config.num_hidden_layers == 4


def test_missing_tensor(ckpt):
    rewrite_weights(ckpt, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    assert "tensor model.layers.1.mlp.up_proj.weight is missing" in refused(ckpt)


@pytest.mark.parametrize("layers", [2, 6])
def test_config_layers_disagree_with_the_weights(ckpt, layers):
    rewrite_config(ckpt, num_hidden_layers=layers)
    message = refused(ckpt)
    assert f"config.json has num_hidden_layers={layers}, the weights hold 4 layers" in message
    if layers == 2:
        assert "unexpected tensor model.layers.2." in message
    else:
        assert "tensor model.layers.4." in message and "is missing" in message


def test_unexpected_tensor(ckpt):
    rewrite_weights(ckpt, lambda t: t.update({"model.extra.weight": torch.zeros(3)}))
    assert "unexpected tensor model.extra.weight" in refused(ckpt)


def test_wrong_shape(ckpt):
    rewrite_weights(ckpt, lambda t: t.update({"model.norm.weight": torch.ones(31)}))
    assert "tensor model.norm.weight has shape [31], config.json gives [32]" in refused(ckpt)


def test_wrong_dtype(ckpt):
    def to_half(t):
        t["model.layers.0.self_attn.q_proj.weight"] = t["model.layers.0.self_attn.q_proj.weight"].half()

    rewrite_weights(ckpt, to_half)
    assert "tensor model.layers.0.self_attn.q_proj.weight has dtype F16, expected config.json's float32" in refused(ckpt)


def test_fp32_weights_under_a_bf16_config_load(ckpt):
    """fp32 holds every bf16 value: nothing is lost, so it is not refused."""
    rewrite_config(ckpt, torch_dtype="bfloat16", dtype="bfloat16")
    load(str(ckpt))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights(ckpt, value):
    def poison(t):
        t["model.layers.3.mlp.down_proj.weight"][5, 7] = value

    rewrite_weights(ckpt, poison)
    assert "tensor model.layers.3.mlp.down_proj.weight holds NaN or Inf values" in refused(ckpt)


@pytest.mark.parametrize("values, expected", [
    ({"num_attention_heads": 0}, "num_attention_heads must be an integer >= 1, got 0"),
    ({"num_hidden_layers": 0}, "num_hidden_layers must be an integer >= 1, got 0"),
    ({"vocab_size": -1}, "vocab_size must be an integer >= 1, got -1"),
    ({"hidden_size": "32"}, "hidden_size must be an integer >= 1, got '32'"),
    ({"num_key_value_heads": 3}, "num_key_value_heads 3 must divide num_attention_heads 4"),
    ({"head_dim": None, "hidden_size": 30}, "hidden_size 30 is not divisible by num_attention_heads 4"),
    ({"head_dim": 7}, "head_dim must be even"),
    ({"rms_norm_eps": 0}, "rms_norm_eps must be a number in (0, 1)"),
    ({"torch_dtype": "int8", "dtype": "int8"}, "torch_dtype 'int8': expected one of"),
])
def test_config_values(ckpt, values, expected):
    rewrite_config(ckpt, **values)
    message = refused(ckpt)
    assert f"{ckpt / 'config.json'}: {expected}" in message


def test_sharded_index_naming_a_missing_shard(ckpt):
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}}))
    assert "tensor model.norm.weight is in model-00002-of-00002.safetensors, which is missing" in refused(ckpt)


def test_an_adapter_over_a_damaged_base_is_refused(ckpt, tmp_path):
    from peft import LoraConfig, get_peft_model

    peft = get_peft_model(load_model(str(ckpt)), LoraConfig(r=2, target_modules=["q_proj"]))
    peft.peft_config["default"].base_model_name_or_path = str(ckpt)
    peft.save_pretrained(tmp_path / "adapter")
    rewrite_weights(ckpt, lambda t: t.pop("lm_head.weight"))
    with pytest.raises(CheckpointError, match="tensor lm_head.weight is missing"):
        load(str(tmp_path / "adapter"))


def test_command_line_refuses_in_one_line_with_exit_2(ckpt, tmp_path):
    """Through a trainer's command line (a fresh process): exit code 2, one line on stderr, no traceback."""
    from tests.test_train_data import fabricate_records
    from t3d.model.checkpoint import load_tokenizer

    rewrite_config(ckpt, num_hidden_layers=6)
    data = tmp_path / "records.json"
    data.write_text(json.dumps(fabricate_records(load_tokenizer(str(ckpt)), 8)))
    out = subprocess.run(
        [sys.executable, "train/self_ddo_sdar_full.py", "config=configs/ddo_sdar_full_self.yaml",
         f"dataset.optimization_data={data}", f"experiment.output_dir={tmp_path / 'exp'}",
         f"model.pretrained_model={ckpt}"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("self_ddo_sdar_full.py: error: ") and str(ckpt) in last
    assert "tensor model.layers.4." in last and "num_hidden_layers=6, the weights hold 4 layers" in last


def test_hub_id_and_local_dir_rule(tmp_path, monkeypatch):
    """One rule for every caller: a spec is a local directory (as given, else under the toolkit's home) when one
    exists, else a hub id when shaped owner/name (not starting with / . ~), else neither."""
    from t3d.model.checkpoint import HOME, hub_id, local_dir

    monkeypatch.chdir(tmp_path)
    assert hub_id("JetLM/SDAR-4B-Chat") == "JetLM/SDAR-4B-Chat" and local_dir("JetLM/SDAR-4B-Chat") is None
    assert local_dir("models/sdar-tiny") == HOME / "models/sdar-tiny" and hub_id("models/sdar-tiny") is None
    (tmp_path / "owner" / "name").mkdir(parents=True)  # a local folder shaped like an id wins
    assert local_dir("owner/name").resolve() == tmp_path / "owner" / "name" and hub_id("owner/name") is None
    for spec in ("./a/b", "/a/b", "~/b", "a", "a/b/c", "", None):
        assert hub_id(spec) is None
