"""Every attention implementation that runs on this machine gives SDPA's logits (fp32, <= 1e-5), through a
training layout (block mask, padding) and through cached block decoding; FlexAttention builds its block mask
once per forward, not once per layer; load() takes the setting."""
import pytest
import torch

from t3d.model.checkpoint import ATTN_IMPLEMENTATIONS, CheckpointError, attn_implementation_problem, load_model
from t3d.model.masks import pad_sequences, training_layout
from t3d.model.sdar import SDARBlockCache, SDARConfig, SDARForCausalLM

SHAPE = dict(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8, max_position_embeddings=128)
AVAILABLE = [name for name in ATTN_IMPLEMENTATIONS[1:] if attn_implementation_problem(name) is None]


def model_with(implementation):
    torch.manual_seed(0)
    model = SDARForCausalLM(SDARConfig(**SHAPE)).eval()
    model.config._attn_implementation = implementation
    return model


def layout():
    P, pl = pad_sequences([[5, 6, 7, 8, 9, 10, 11], [12, 13, 14]], 0, left=True)
    R, rl = pad_sequences([[20, 21, 22, 23, 24], [25, 26]], 0)
    return training_layout(P, pl, R, rl, torch.full_like(R, 3), 4)


def training_logits(model):
    lay = layout()
    return model(lay["input_ids"], attention_mask=lay["attention_mask"], position_ids=lay["position_ids"]).logits


def cached_logits(model):
    """Prefill 8 tokens into the cache, then a 4-token block against it (mask covers cache + block)."""
    ids = torch.randint(1, 48, (2, 12), generator=torch.Generator().manual_seed(1))
    cache = SDARBlockCache(model.config, 2, 12)
    causal_blocks = torch.arange(12)[:, None] // 4 >= torch.arange(12)[None] // 4
    model(ids[:, :8], attention_mask=causal_blocks[None, None, :8, :8].expand(2, 1, 8, 8), past_key_values=cache,
          commit_kv=8)
    return model(ids[:, 8:], attention_mask=causal_blocks[None, None, 8:, :12].expand(2, 1, 4, 12),
                 past_key_values=cache, position_ids=torch.arange(8, 12)[None].expand(2, -1)).logits


@pytest.mark.parametrize("implementation", [n for n in AVAILABLE if n != "sdpa"])
def test_same_logits_as_sdpa(implementation):
    with torch.no_grad():
        sdpa, other = model_with("sdpa"), model_with(implementation)
        lay = layout()
        valid = lay["attention_mask"][:, 0].any(-1)  # every row attends somewhere in this layout
        assert valid.all()
        torch.testing.assert_close(training_logits(other), training_logits(sdpa), rtol=0, atol=1e-5)
        torch.testing.assert_close(cached_logits(other), cached_logits(sdpa), rtol=0, atol=1e-5)


def test_sdpa_and_eager_train_alike():
    grads = []
    for implementation in ("sdpa", "eager"):
        model = model_with(implementation).train()
        training_logits(model).float().logsumexp(-1).mean().backward()
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-5)


@pytest.mark.skipif("flex_attention" not in AVAILABLE, reason="FlexAttention is not in this torch build")
def test_flex_block_mask_is_built_once_per_forward(monkeypatch):
    import torch.nn.attention.flex_attention as flex

    calls = []
    real = flex.create_block_mask
    monkeypatch.setattr(flex, "create_block_mask", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        training_logits(model_with("flex_attention"))
    assert len(calls) == 1  # two layers, one mask


def test_load_takes_the_setting(tiny_dir):
    for implementation in AVAILABLE:
        assert load_model(str(tiny_dir), attn_implementation=implementation).config._attn_implementation == implementation
    assert load_model(str(tiny_dir)).config._attn_implementation == "sdpa"  # auto: the tiny config names none
    with pytest.raises(CheckpointError, match="attn_implementation: unknown attention implementation 'fast'"):
        load_model(str(tiny_dir), attn_implementation="fast")
    if "flash_attention_2" not in AVAILABLE:
        with pytest.raises(CheckpointError, match="flash_attention_2 needs the flash-attn package and a CUDA device"):
            load_model(str(tiny_dir), attn_implementation="flash_attention_2")
    if not torch.cuda.is_available():
        with pytest.raises(CheckpointError, match="flex_attention has no CPU backward"):
            load_model(str(tiny_dir), attn_implementation="flex_attention", training=True)
