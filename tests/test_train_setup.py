"""How the trainers load what they train: each model straight in its dtype (no fp32 copy of a bf16 model, no
deep copy), the attention kernel chosen once and recorded in the run's config."""
import pytest
import torch

from t3d.common.config import ConfigError, load_config
from t3d.common.paths import CONFIGS
from t3d.model.checkpoint import load_model
from t3d.train.checkpoints import check_attn_setting, record_attn_implementation
from t3d.train.self_ddo import training_models


def cfg_with(tiny_dir, *overrides):
    return load_config([f"config={CONFIGS / 't3d_tiny.yaml'}", f"model.pretrained_model={tiny_dir}", *overrides])


@pytest.mark.parametrize("precision, ref_dtype", [("bf16", torch.bfloat16), ("'no'", torch.float32)])
def test_full_t3d_loads_fp32_target_and_reference_in_its_own_dtype(tiny_dir, precision, ref_dtype):
    model, ref, adapters = training_models(cfg_with(tiny_dir, f"training.mixed_precision={precision}"), str(tiny_dir))
    assert adapters is None and model.training and not ref.training
    assert {p.dtype for p in model.parameters()} == {torch.float32} and all(p.requires_grad for p in model.parameters())
    assert {p.dtype for p in ref.parameters()} == {ref_dtype} and not any(p.requires_grad for p in ref.parameters())
    for p, q in zip(model.parameters(), ref.parameters()):  # the same weights, in separate storage
        assert torch.equal(p.detach().to(ref_dtype), q) and p.data_ptr() != q.data_ptr()
    assert model.config._attn_implementation == ref.config._attn_implementation == "sdpa"


def test_lora_base_loads_in_bf16_with_fp32_adapters(tiny_dir):
    from t3d.train.lora import AdapterReference

    cfg = cfg_with(tiny_dir, "training.mixed_precision=bf16", "model.lora.r=4")
    model, ref, adapters = training_models(cfg, str(tiny_dir))
    assert adapters is not None and isinstance(ref, AdapterReference) and ref.model is model
    for name, p in model.named_parameters():
        if "lora_" in name:
            assert p.dtype == torch.float32, name
        else:
            assert p.dtype == torch.bfloat16 and not p.requires_grad, name
    # the same as loading fp32 and casting, as the trainer did before: same weights, same reference
    from t3d.train import lora

    before = lora.add_adapters(load_model(str(tiny_dir)).train(), adapters, str(tiny_dir), snapshot=True,
                               bf16_base=True)
    for (name, p), q in zip(model.named_parameters(), before.parameters()):
        assert torch.equal(p, q) or "lora_A" in name, name  # (A is random: a fresh draw)
    x = torch.randint(0, 100, (1, 8))
    with torch.no_grad(), before.disable_adapter():
        assert torch.equal(ref.at(0)(input_ids=x).logits, before(input_ids=x).logits)


def test_attn_setting_checked_and_recorded(tiny_dir):
    with pytest.raises(ConfigError, match="model.attn_implementation must be one of auto, sdpa, flex_attention"):
        check_attn_setting(cfg_with(tiny_dir, "model.attn_implementation=flash"))
    cfg = cfg_with(tiny_dir, "model.attn_implementation=eager")
    model, _, _ = training_models(cfg, str(tiny_dir))
    record_attn_implementation(cfg, model)
    assert cfg.model.attn_implementation == "eager" == model.config._attn_implementation
    auto = cfg_with(tiny_dir)
    record_attn_implementation(auto, training_models(auto, str(tiny_dir))[0])
    assert auto.model.attn_implementation == "sdpa"  # the tiny config names none: sdpa
