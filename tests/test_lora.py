"""LoRA through PEFT (t3d.train.lora, the adapter side of t3d.model.checkpoint): zero-effect adapters make the first
T3D step the full one, only the trained adapter learns, the self-play snapshot reference, adapter checkpoints
through the one loader, config errors; slow: LoRA T3D through the CLI (kill and resume in round 2, ZeRO-1 with
2 processes, eval.py on the adapter)."""
import copy
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.test_bad_inputs_train import exit_code, isolated  # noqa: F401  (isolated: a fixture)
from tests.test_losses import _tiny_batch
from tests.test_train_run import ENV, REPO, RUN, launch, metrics, records_file, t3d_args
from t3d.train import lora
from t3d.train.objectives import T3DSettings, t3d_micro_step
from t3d.model.checkpoint import CheckpointError, check_checkpoint, content_fingerprint, load_model
from t3d.common.config import ConfigError, load_config
from t3d.common.paths import CHECKOUT

LORA = ["model.lora.r=4", "model.lora.alpha=8.0"]


def lora_cfg(*overrides):
    return lora.lora_config(load_config(["config=configs/ddo_sdar_full_self.yaml", *LORA, *overrides]))


def settings(tokenizer, **kw):
    return T3DSettings(seed=0, block_size=4, mask_id=tokenizer.mask_token_id, vocab_ids=torch.arange(10, 200),
                       mask_ratios=(1.0, 0.5), random_ratio=0.1, reference_temp=0.7, **kw)


@pytest.fixture
def adapted(tiny):
    base, tokenizer = tiny
    torch.manual_seed(0)
    return lora.add_adapters(copy.deepcopy(base).train(), lora_cfg(), "/base", snapshot=True), tokenizer


def perturb(model, scale=0.05, seed=1):
    """Non-zero B (trained adapters are not zero-effect)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B.default" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def trained_names(model):
    return {n for n, _ in model.named_parameters() if ".default." in n and "lora_" in n}


def test_lora_off_by_default_and_its_config():
    assert lora.lora_config(load_config(["config=configs/ddo_sdar_full_self.yaml"])) is None
    for name in ("t3d_tiny", "sft_sdar", "sft_tiny"):
        assert load_config([f"config=configs/{name}.yaml"]).model.lora.r is None
    c = lora_cfg("model.lora.target_modules=[q_proj,down_proj]", "model.lora.dropout=0.1")
    assert (c.r, c.lora_alpha, c.lora_dropout, sorted(c.target_modules)) == (4, 8.0, 0.1, ["down_proj", "q_proj"])


@pytest.mark.parametrize("override, message", [
    ("model.lora.r=0", "model.lora.r must be null (off) or an integer >= 1, got 0"),
    ("model.lora.r=four", "model.lora.r must be null (off) or an integer >= 1, got 'four'"),
    ("model.lora.alpha=0", "model.lora.alpha must be a number > 0, got 0"),
    ("model.lora.dropout=1", "model.lora.dropout must be a number in [0, 1), got 1"),
    ("model.lora.target_modules=[q_proj,lm_head]", "model.lora.target_modules: unknown module 'lm_head'; choose from "
                                                    "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"),
    ("model.lora.target_modules=[]", "model.lora.target_modules: empty; choose from q_proj"),
    ("model.lora.target_modules=[q_proj,q_proj]",
     "model.lora.target_modules lists a module twice: ['q_proj', 'q_proj']"),
])
def test_bad_lora_configs_are_one_line_errors(override, message):
    with pytest.raises(ConfigError) as err:
        lora_cfg(override)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


BASE_NAME_ERROR = ("model.lora.base_name must be null (record the base the run loads) or the hub id or path adapters "
                   "record as their base, e.g. 'JetLM/SDAR-4B-Chat'; got ")


@pytest.mark.parametrize("override, got", [("model.lora.base_name=5", "5"), ("model.lora.base_name=''", "''"),
                                           ("model.lora.base_name=[a,b]", "['a', 'b']"),
                                           ("model.lora.base_name=' JetLM/x'", "' JetLM/x'"),
                                           ("model.lora.base_name.x=1", "{'x': 1}")])
def test_bad_base_names_are_one_line_errors_naming_the_key(override, got):
    with pytest.raises(ConfigError) as err:
        lora_cfg(override)
    assert str(err.value) == BASE_NAME_ERROR + got


def test_base_name_is_optional_and_taken_verbatim():
    for name in ("JetLM/SDAR-4B-Chat", "../bases/sdar-4b", "/data/models/SDAR 4B"):
        assert lora.base_name(load_config(["config=configs/ddo_sdar_full_self.yaml", f"model.lora.base_name={name}"])) \
            == name
        assert lora.base_source("models/sdar-tiny", "/abs/models/sdar-tiny", name) == name
    assert lora.base_name(load_config(["config=configs/ddo_sdar_full_self.yaml"])) is None
    old = load_config(["config=configs/ddo_sdar_full_self.yaml", *LORA])
    del old.model.lora["base_name"]  # a config written before the key existed
    assert lora.base_name(old) is None and lora.lora_config(old).r == 4


def test_recorded_base_is_relative_inside_the_output_tree_only(tmp_path):
    tree, outside = tmp_path / "out", tmp_path / "elsewhere"
    (tree / "bases" / "tiny").mkdir(parents=True)
    (outside / "tiny").mkdir(parents=True)
    adapter = tree / "run" / "ckpt" / "optimized"  # not created yet: saving writes it
    (tree / "run" / "ckpt" / "sft").mkdir(parents=True)  # an earlier checkpoint of the same run, as a base
    assert lora.recorded_base(str(tree / "bases" / "tiny"), adapter, tree) == "../../../bases/tiny"
    assert lora.recorded_base(str(tree / "run" / "ckpt" / "sft"), adapter, tree) == "../sft"
    assert lora.recorded_base(str(outside / "tiny"), adapter, tree) == str(outside / "tiny")  # not in the tree
    assert lora.recorded_base(str(tree / "bases" / "tiny"), outside / "a", tree) == str(tree / "bases" / "tiny")
    assert lora.recorded_base("JetLM/SDAR-4B-Chat", adapter, tree) == "JetLM/SDAR-4B-Chat"  # a hub id
    assert lora.recorded_base(str(tree / "bases" / "tiny"), adapter, None) == str(tree / "bases" / "tiny")
    (tmp_path / "link").symlink_to(tree)  # the tree named through a symbolic link: the same rule
    assert lora.recorded_base(str(tree / "bases" / "tiny"), tmp_path / "link" / "run" / "ckpt" / "x",
                              tmp_path / "link") == "../../../bases/tiny"


def test_checkpoint_records_base_name_verbatim_else_the_tree_rule(tmp_path):
    from types import SimpleNamespace

    from t3d.train.checkpoints import adapter_base_record

    base = tmp_path / "out" / "bases" / "tiny"
    base.mkdir(parents=True)
    model = SimpleNamespace(peft_config={lora.TRAINED: SimpleNamespace(base_model_name_or_path=str(base))})
    dest = tmp_path / "out" / "ddo_sdar_full_self" / "ckpt" / "optimized"
    argv = ["config=configs/ddo_sdar_full_self.yaml", f"experiment.output_dir={tmp_path / 'out'}", *LORA]
    assert adapter_base_record(load_config(argv), model, dest) == "../../../bases/tiny"
    named = load_config([*argv, f"model.lora.base_name={base}"])  # a path inside the tree, yet verbatim
    model.peft_config[lora.TRAINED].base_model_name_or_path = lora.base_source(str(base), str(base), str(base))
    assert adapter_base_record(named, model, dest) == str(base)


def test_step0_lora_t3d_loss_equals_full_loss_and_only_adapters_learn(tiny, adapted):
    base, tokenizer = tiny
    model, _ = adapted
    batch, s = _tiny_batch(tokenizer), settings(tokenizer)
    full_loss, full_parts = t3d_micro_step(copy.deepcopy(base).train(), copy.deepcopy(base).eval(), batch, 0, s)
    ref = lora.AdapterReference(model, rounds=True, every=1)
    loss, parts = t3d_micro_step(model, ref.at(0), batch, 0, s)
    assert loss.item() == full_loss.item()  # B = 0: the adapted model is the base, bit for bit
    assert {k: v.item() for k, v in parts.items()} == {k: v.item() for k, v in full_parts.items()}
    assert parts["ddo_real"].item() == pytest.approx(math.log(2))
    loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, p in model.named_parameters() if p.requires_grad} == trained_names(model)
    assert len(with_grad) == 2 * 7 * 2  # A and B of 7 modules in 2 layers; base and snapshot frozen
    grads = {n: model.get_parameter(n).grad for n in with_grad}
    assert all(g.abs().max() > 0 for n, g in grads.items() if "lora_B" in n)
    assert all((g == 0).all() for n, g in grads.items() if "lora_A" in n)  # dL/dA = B^T (...) = 0 at B = 0


def test_snapshot_reference_follows_rounds_and_leaves_training_state(adapted):
    model, tokenizer = adapted
    x = torch.randint(10, 200, (2, 8))
    ref = lora.AdapterReference(model, rounds=True, every=2)
    perturb(model)
    with torch.no_grad():
        target, base = model(input_ids=x).logits, ref.at(1)(input_ids=x).logits
        assert ref.at(2)(input_ids=x).logits.equal(base)  # snapshot still zero: round 2 reference = base
        ref.refresh()  # round boundary
        snap = ref.at(2)(input_ids=x).logits
        assert ref.at(1)(input_ids=x).logits.equal(base)
    assert (target - base).abs().max() > 1e-3 and snap.equal(target)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trained_names(model)
    single = lora.AdapterReference(model, rounds=False, every=2)
    assert single.at(5) == single._base  # no self-play: always the base


def test_adapter_checkpoint_round_trip_through_the_loader(tiny_dir, tmp_path):
    base = load_model(str(tiny_dir)).train()
    torch.manual_seed(0)
    model = lora.add_adapters(base, lora_cfg(), str(tiny_dir))
    perturb(model)
    out = tmp_path / "adapter"
    merged = lora.save_adapter(model, None, out, merged=True).eval()
    assert {"adapter_config.json", "adapter_model.safetensors", "merged"} <= {p.name for p in out.iterdir()}
    written = json.loads((out / "adapter_config.json").read_text())
    assert written["base_model_name_or_path"] == str(tiny_dir) and written["task_type"] == "CAUSAL_LM"
    assert written.get("auto_mapping") is None  # PEFT names no module of t3d's for a task-typed adapter
    assert model.peft_config[lora.TRAINED].task_type is None  # training keeps the plain PeftModel
    # an adapter saved before task_type was written (PEFT's save_pretrained alone: task_type null)
    model.save_pretrained(tmp_path / "old", selected_adapters=[lora.TRAINED], safe_serialization=True,
                         save_embedding_layers=False)
    old = json.loads((tmp_path / "old" / "adapter_config.json").read_text())
    assert old["task_type"] is None and old["auto_mapping"]["base_model_class"] == "SDARForCausalLM"
    assert (tmp_path / "old" / "adapter_model.safetensors").read_bytes() == \
        (out / "adapter_model.safetensors").read_bytes()
    assert not any("lora" in k for k in load_file(str(out / "merged" / "model.safetensors")))
    x = torch.randint(10, 200, (2, 8))
    loaded, from_merged_dir = load_model(str(out)), load_model(str(out / "merged"))
    from_old = load_model(str(tmp_path / "old"))
    with torch.no_grad():
        want = merged(input_ids=x).logits
        assert loaded(input_ids=x).logits.equal(want) and from_merged_dir(input_ids=x).logits.equal(want)
        assert from_old(input_ids=x).logits.equal(want)  # old (task_type null) and new adapters: the same model
        unmerged = model.eval()(input_ids=x).logits  # the PEFT forward: same numbers up to rounding
    assert (unmerged - want).abs().max() < 1e-4
    assert check_checkpoint(str(out))["model_type"] == "sdar"
    # the fingerprint covers the adapter and its base
    before = content_fingerprint(out)
    other_base = tmp_path / "base"
    shutil.copytree(tiny_dir, other_base)
    config = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(other_base)}))
    assert content_fingerprint(out)["weights"] != before["weights"]  # (the recorded base path is part of it)
    moved = content_fingerprint(out)
    torch.nn.init.zeros_(base.model.norm.weight)
    base.save_pretrained(other_base)  # the base's weights change
    assert content_fingerprint(out)["weights"] != moved["weights"]
    assert content_fingerprint(out)["tokenizer"] == before["tokenizer"]
    shutil.rmtree(other_base)
    with pytest.raises(CheckpointError) as err:
        load_model(str(out))
    assert str(err.value) == (f"{out / 'adapter_config.json'}: base model not found: checkpoint_path '{other_base}': "
                              "no such directory (and not a hub id like 'JetLM/SDAR-4B-Chat')")


class Collect(logging.Handler):
    """The records transformers logs (its library root logger does not propagate, so caplog sees none)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def __enter__(self):
        logging.getLogger("transformers").addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger("transformers").removeHandler(self)


def test_the_toolkit_model_takes_a_causal_lm_adapter_without_generation_warnings(tiny_dir, tmp_path):
    """A saved adapter says task_type CAUSAL_LM, so PEFT wraps the base in PeftModelForCausalLM, which keeps the
    base's prepare_inputs_for_generation: SDAR has one (raising, like generate) and answers can_generate False
    itself, so transformers prints no "has generative capabilities" warning."""
    from peft import PeftModel, PeftModelForCausalLM

    from t3d.model.sdar.modeling_sdar import NO_GENERATE, SDARForCausalLM

    torch.manual_seed(0)
    model = lora.add_adapters(load_model(str(tiny_dir)), lora_cfg(), str(tiny_dir))
    perturb(model)
    lora.save_adapter(model, None, tmp_path / "adapter", merged=False)
    with Collect() as logged:
        wrapped = PeftModel.from_pretrained(load_model(str(tiny_dir)), str(tmp_path / "adapter")).eval()
        assert type(wrapped) is PeftModelForCausalLM and SDARForCausalLM.can_generate() is False
        assert load_model(str(tmp_path / "adapter")).can_generate() is False  # the toolkit's loader: the same
    assert logged.messages == []
    assert wrapped.get_base_model().generation_config is None  # as before: no generation_config.json is saved
    x = torch.randint(10, 200, (2, 8))
    base = wrapped.get_base_model()
    for call in (lambda: wrapped.generate(input_ids=x), lambda: base.prepare_inputs_for_generation(x)):
        with pytest.raises(NotImplementedError) as err:
            call()
        assert str(err.value) == NO_GENERATE
    with torch.no_grad():
        assert (wrapped(input_ids=x).logits - model.eval()(input_ids=x).logits).abs().max() < 1e-5


def test_lm_eval_model_loads_an_adapter_directory(tiny_dir, tmp_path):
    from t3d.integrations.lm_eval import SDARBlockDiffusionLM

    torch.manual_seed(0)
    model = lora.add_adapters(load_model(str(tiny_dir)), lora_cfg(), str(tiny_dir))
    perturb(model)
    merged = lora.save_adapter(model, None, tmp_path / "adapter", merged=False)
    assert merged is None
    want = model.merge_and_unload().eval()
    lm = SDARBlockDiffusionLM(pretrained=str(tmp_path / "adapter"), block_size=4, denoising_steps=1)
    x = torch.randint(10, 200, (2, 8))
    with torch.no_grad():
        assert lm.model(input_ids=x).logits.equal(want(input_ids=x).logits)
    assert lm.checkpoint == str(tmp_path / "adapter")
    # an adapter saved without tokenizer files (PEFT's save_pretrained alone) takes its base's
    assert not list((tmp_path / "adapter").glob("tokenizer*")) and lm.tokenizer.mask_token_id is not None


def test_resume_fingerprint_has_lora_only_when_on(tmp_path):
    from omegaconf import OmegaConf

    from t3d.train import checkpoints as ck

    data, model = tmp_path / "d.json", tmp_path / "m"
    data.write_text("[]")
    model.mkdir()

    def fp(cfg):
        return ck.run_fingerprint(cfg, data, model, 1)

    off = load_config(["config=configs/ddo_sdar_full_self.yaml"])
    older = OmegaConf.create(OmegaConf.to_container(off))
    del older.model["lora"]  # a run started before model.lora existed still resumes with LoRA off
    assert ck.fingerprint_changes(fp(older), fp(off)) == []
    on = load_config(["config=configs/ddo_sdar_full_self.yaml", *LORA])
    assert ck.fingerprint_changes(fp(off), fp(on)) == [
        "model.lora.alpha '<absent>' -> 8.0", "model.lora.dropout '<absent>' -> 0.0", "model.lora.r '<absent>' -> 4",
        "model.lora.target_modules '<absent>' -> ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', "
        "'down_proj']"]
    saving = load_config(["config=configs/ddo_sdar_full_self.yaml", *LORA, "model.lora.save_merged=true"])
    assert ck.fingerprint_changes(fp(on), fp(saving)) == []  # saving cadence, not training


def test_adapter_records_its_base_and_adapters_chain(tiny_dir, tmp_path):
    assert lora.base_source("JetLM/SDAR-4B-Chat", "/hub/cache/snapshot") == "JetLM/SDAR-4B-Chat"  # portable
    assert lora.base_source("models/sdar-tiny", "/abs/models/sdar-tiny") == "/abs/models/sdar-tiny"
    assert lora.base_source(str(tiny_dir), str(tiny_dir)) == str(tiny_dir)
    # training on top of an adapter directory: the new adapter's base is that directory, loaded merged
    torch.manual_seed(0)
    first = lora.add_adapters(load_model(str(tiny_dir)), lora_cfg(), str(tiny_dir))
    perturb(first, seed=1)
    lora.save_adapter(first, None, tmp_path / "one", merged=False)
    torch.manual_seed(0)
    second = lora.add_adapters(load_model(str(tmp_path / "one")), lora_cfg(), str(tmp_path / "one"))
    perturb(second, seed=2)
    want = lora.save_adapter(second, None, tmp_path / "two", merged=True).eval()
    x = torch.randint(10, 200, (2, 8))
    with torch.no_grad():
        assert load_model(str(tmp_path / "two"))(input_ids=x).logits.equal(want(input_ids=x).logits)


def sft(argv):
    from t3d.train.sft import main

    return exit_code(main, argv)


def test_lora_sft_in_process_saves_an_adapter_and_its_rank_is_in_the_resume_fingerprint(tiny_dir, tmp_path, capsys,
                                                                                       isolated):
    from t3d.model.checkpoint import load

    assert sft(["config=configs/sft_tiny.yaml", f"experiment.output_dir={tmp_path}", "model.lora.r=4"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "error: model.lora needs a pretrained base: set model.init_from_scratch=false")
    items = [{"question": f"Compute {a}+{a + 1}.", "solution": f"{a}+{a + 1}={2 * a + 1}. \\boxed{{{2 * a + 1}}}"}
             for a in range(10, 26)]
    (tmp_path / "items.json").write_text(json.dumps(items))
    argv = ["config=configs/sft_tiny.yaml", f"experiment.output_dir={tmp_path}", "model.init_from_scratch=false",
            f"model.pretrained_model={tiny_dir}", f"dataset.optimization_data={tmp_path / 'items.json'}",
            "training.batch_size_lm=8", "training.num_train_epochs=1", "training.num_threads=1",
            "experiment.save_every_steps=1", "optimizer.params.learning_rate=1e-2", *LORA]
    assert sft(argv) == 0
    assert "LoRA: 0.008M trainable adapter parameters" in capsys.readouterr().out
    saved = tmp_path / "sft_tiny" / "ckpt" / "sft"
    assert (saved / "adapter_model.safetensors").is_file() and not (saved / "model.safetensors").exists()
    model, _, path = load(str(saved))
    base = load_model(str(tiny_dir))
    x = torch.randint(10, 200, (1, 8))
    with torch.no_grad():
        assert (model(input_ids=x).logits - base(input_ids=x).logits).abs().max() > 1e-3
    assert sft([*argv, "model.lora.save_merged=true"]) == 0  # saving cadence only: resumes (already finished)
    assert (saved / "merged" / "model.safetensors").is_file()
    # the base lies outside experiment.output_dir: recorded by its absolute path
    assert json.loads((saved / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_dir)
    # model.lora.base_name is recorded verbatim; it changes no trained number, so the finished run resumes
    assert sft([*argv, "model.lora.base_name=JetLM/SDAR-4B-Chat"]) == 0
    assert json.loads((saved / "adapter_config.json").read_text())["base_model_name_or_path"] == "JetLM/SDAR-4B-Chat"
    assert sft([*argv, "model.lora.base_name=7"]) == 2
    assert capsys.readouterr().err.strip().endswith("error: " + BASE_NAME_ERROR + "7")
    assert sft([*argv, "model.lora.r=8"]) == 2
    assert "it belongs to a different run (model.lora.r 4 -> 8)" in capsys.readouterr().err


AUTO_PEFT = """
import json, sys
class NoT3D:  # only the adapter and its base: the package is not installed here
    def find_spec(self, name, path=None, target=None):
        if name == "t3d" or name.startswith("t3d."):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, NoT3D())
import torch
from peft import AutoPeftModelForCausalLM
path, ids = sys.argv[1], torch.tensor(json.loads(sys.argv[2]))
model = AutoPeftModelForCausalLM.from_pretrained(path, trust_remote_code=True, dtype=torch.float32).eval()
try:
    model.generate(input_ids=ids)
except NotImplementedError as err:
    refused = str(err)
with torch.no_grad():
    unmerged = model(input_ids=ids).logits
    merged = model.merge_and_unload()(input_ids=ids).logits
print(json.dumps({"class": type(model).__name__, "unmerged": unmerged.flatten().tolist(),
                  "merged": merged.flatten().tolist(), "generate": refused}))
"""


def test_a_trained_adapter_moves_with_its_base_and_loads_with_auto_peft(tmp_path, capsys, isolated):
    """A LoRA SFT run whose base (models/sdar-tiny) lies inside experiment.output_dir records it relative to the
    adapter; the output folder copied elsewhere (the original deleted) still loads through the toolkit's loader,
    bit for bit, and through peft.AutoPeftModelForCausalLM without t3d (run from the adapter directory, where a
    relative base resolves for PEFT too): the merged model gives the toolkit's logits exactly, with no
    transformers warning about generation."""
    out = tmp_path / "out"
    shutil.copytree(CHECKOUT / "models" / "sdar-tiny", out / "bases" / "sdar-tiny")  # symlinked code: copied
    items = [{"question": f"Compute {a}+{a + 1}.", "solution": f"{a}+{a + 1}={2 * a + 1}. \\boxed{{{2 * a + 1}}}"}
             for a in range(10, 18)]
    (tmp_path / "items.json").write_text(json.dumps(items))
    assert sft(["config=configs/sft_tiny.yaml", f"experiment.output_dir={out}", "model.init_from_scratch=false",
                f"model.pretrained_model={out / 'bases' / 'sdar-tiny'}",
                f"dataset.optimization_data={tmp_path / 'items.json'}",
                "training.batch_size_lm=8", "training.num_train_epochs=1", "training.num_threads=1",
                "optimizer.params.learning_rate=1e-2", *LORA]) == 0
    capsys.readouterr()
    saved = out / "sft_tiny" / "ckpt" / "sft"
    config = json.loads((saved / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "../../../bases/sdar-tiny"
    assert config["task_type"] == "CAUSAL_LM" and config.get("auto_mapping") is None
    ids = torch.tensor([[5, 17, 42, 3, 3, 3, 3, 9, 11, 2]])
    with torch.no_grad():
        before = load_model(str(saved))(input_ids=ids).logits
        assert (before - load_model(str(out / "bases" / "sdar-tiny"))(input_ids=ids).logits).abs().max() > 1e-3

    # t3d-export copies the adapter alone: its copy records the base's absolute path (relative, it names nothing)
    from t3d.model.publish import export

    exported = export(saved, tmp_path / "exported")
    pinned = str((out / "bases" / "sdar-tiny").resolve())
    assert json.loads((exported / "adapter_config.json").read_text())["base_model_name_or_path"] == pinned
    assert f"- Base model: `{pinned}`" in (exported / "README.md").read_text()
    with torch.no_grad():
        assert load_model(str(exported))(input_ids=ids).logits.equal(before)
    shutil.rmtree(exported)

    moved = tmp_path / "elsewhere" / "shipped"
    shutil.copytree(out, moved)
    shutil.rmtree(out)
    adapter_dir = moved / "sft_tiny" / "ckpt" / "sft"
    with torch.no_grad():
        assert load_model(str(adapter_dir))(input_ids=ids).logits.equal(before)

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "hf_modules")
    run = subprocess.run([sys.executable, "-c", AUTO_PEFT, ".", json.dumps(ids.tolist())], cwd=adapter_dir, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "generat" not in run.stderr.lower(), run.stderr[-3000:]  # no can_generate / GenerationMixin warning
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["class"] == "PeftModelForCausalLM"
    assert got["merged"] == before.flatten().tolist()  # merged as the toolkit merges: the same numbers exactly
    assert (torch.tensor(got["unmerged"]) - before.flatten()).abs().max() < 1e-4  # unmerged: up to rounding
    assert got["generate"] == ("SDAR is a block-diffusion model and does not decode left to right: use "
                               "model.diffusion_generate(...)")


# ---------------------------------------------------------------------------------------------- CLI (slow)
COMMON = ["training.batch_size_lm=2", "optimizer.params.learning_rate=1e-2", "training.reference_temp=0.7",
          "experiment.save_every_steps=1", "experiment.checkpoints_total_limit=null", *LORA]


def adapter(out, name="optimized"):
    return load_file(str(out / RUN / "ckpt" / name / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """One uninterrupted LoRA T3D run, 1 process: 16 records, micro-batch 2 x accumulation 2, 2 rounds of 4 steps."""
    from t3d.model.checkpoint import load_tokenizer

    tmp = tmp_path_factory.mktemp("lora")
    data = records_file(load_tokenizer(str(REPO / "models" / "sdar-tiny")), tmp, 16)
    launch("self_ddo_sdar_full.py", t3d_args(data, tmp / "full", *COMMON, "training.gradient_accumulation_steps=2",
                                             "training.num_threads=1", "model.lora.save_merged=true"))
    return data, tmp


@pytest.mark.slow
def test_lora_t3d_cli_kill_and_resume_in_round_2_is_bit_identical_and_evaluates(lora_run, tmp_path):
    data, tmp = lora_run
    full = tmp / "full" / RUN
    rows = metrics(tmp / "full")
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert rows[0]["ddo_real"] == rows[4]["ddo_real"] == pytest.approx(math.log(2))  # each round starts at ref = target
    assert rows[3]["ddo_real"] != pytest.approx(math.log(2))
    assert {p.name for p in (full / "ckpt" / "optimized").iterdir()} >= {
        "adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "config.yaml", "merged"}
    assert not (full / "ckpt" / "optimized" / "model.safetensors").exists()  # the adapter, not a copy of the base
    assert max(v.abs().max().item() for k, v in adapter(tmp / "full").items() if "lora_B" in k) > 1e-3

    args = t3d_args(data, tmp_path, *COMMON, "training.gradient_accumulation_steps=2", "training.num_threads=1",
                    "model.lora.save_merged=true")
    cmd = [sys.executable, "train/self_ddo_sdar_full.py", *args]
    victim = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / RUN / "state"
    deadline = time.time() + 120
    while not (state / "step-6").is_dir() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (tmp_path / RUN / "ckpt" / "optimized").exists(), "the run finished before the kill"
    rerun = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from" in rerun.stdout and "epoch 2 of 2" in rerun.stdout  # killed in round 2
    assert [r["loss"] for r in metrics(tmp_path)] == [r["loss"] for r in rows]
    want, got = adapter(tmp / "full"), adapter(tmp_path)
    assert want.keys() == got.keys() and all(want[k].equal(got[k]) for k in want)  # bit-identical

    out = tmp_path / "eval"
    ev = subprocess.run([sys.executable, "eval.py", "config=configs/eval.yaml", f"experiment.output_dir={out}",
                         f"evaluation.checkpoint_path={full / 'ckpt' / 'optimized'}", "evaluation.max_items=4"],
                        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr[-3000:]
    (result,) = (out / "eval" / "results").glob("optimized-*/*/*/metrics.json")  # decoded and graded
    assert len((result.parent / "items.jsonl").read_text().splitlines()) == 4


@pytest.mark.slow
def test_lora_t3d_zero1_two_processes_equals_one_process_and_resumes_exactly(lora_run, tmp_path):
    data, tmp = lora_run
    two = t3d_args(data, tmp_path / "two", *COMMON, "training.gradient_accumulation_steps=1")
    launch("self_ddo_sdar_full.py", two, "cpu_2_processes_deepspeed_zero1", tmp_path)
    one_rows, two_rows = metrics(tmp / "full"), metrics(tmp_path / "two")
    assert [r["loss"] for r in two_rows] == pytest.approx([r["loss"] for r in one_rows], rel=1e-4)
    one, ds = adapter(tmp / "full"), adapter(tmp_path / "two")
    # Only float32 summation order differs (all-reduce vs one process): compare the whole update, relative to
    # its size (lora_B starts at zero, so its norm is the update's; lora_A moves by the same Adam steps), not
    # elementwise, where Adam's per-weight normalisation can amplify a near-zero gradient's rounding.
    update = sum(float((one[k].double() ** 2).sum()) for k in one if "lora_B" in k) ** 0.5
    assert sum(float(((one[k].double() - ds[k].double()) ** 2).sum()) for k in one) ** 0.5 < 1e-3 * update
    # the sharded state of round 2 (frozen snapshot adapter included) restores the run exactly
    state = tmp_path / "two" / RUN / "state" / "step-6"
    resumed = t3d_args(data, tmp_path / "resumed", *COMMON, "training.gradient_accumulation_steps=1",
                       f"training.resume_from_checkpoint={state}")
    launch("self_ddo_sdar_full.py", resumed, "cpu_2_processes_deepspeed_zero1", tmp_path)
    again = adapter(tmp_path / "resumed")
    assert all(ds[k].equal(again[k]) for k in ds)
