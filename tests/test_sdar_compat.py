"""Drop-in compatibility with SDAR's original remote code, and the same behaviour under transformers 4.57 and 5.x.

Run under both: `make test` (4.57.6) and `make test-transformers5`.
"""
import json

import pytest
import torch
from safetensors.torch import save_file

import models  # noqa: F401  (Auto registration)
from t3d.model.sdar import SDARBlockCache, SDARConfig, SDARForCausalLM

SMALL = dict(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8, max_position_embeddings=128)


def small_model(seed=0, **kw):
    torch.manual_seed(seed)
    return SDARForCausalLM(SDARConfig(**{**SMALL, **kw})).eval()


def block_causal(n, block=4):
    blocks = torch.arange(n) // block
    return blocks[:, None] >= blocks[None, :]  # [n, n], True = attend


# ---------------------------------------------------------------- masks


def test_float_01_mask_means_attend_as_in_sdar_and_additive_masks_still_work():
    model = small_model()
    x = torch.randint(0, 48, (2, 8))
    keep = block_causal(8)
    ref = model(x, attention_mask=keep[None, None]).logits
    sdar_4d = keep.float()[None, None].expand(2, 1, 8, 8)
    sdar_3d = keep.float()[None]  # SDAR's sampler slices a [1, n, n] float 0/1 mask
    for mask in (sdar_4d, sdar_3d, sdar_4d.to(torch.bfloat16)):
        assert torch.equal(model(x, attention_mask=mask).logits, ref)
    # The first block must not see later blocks: changing them leaves its logits bit-identical.
    y = x.clone()
    y[:, 4:] = (y[:, 4:] + 1) % 48
    assert torch.equal(model(y, attention_mask=sdar_4d).logits[:, :4], ref[:, :4])
    assert not torch.allclose(model(y, attention_mask=sdar_4d).logits[:, 4:], ref[:, 4:])
    for blocked in (float("-inf"), torch.finfo(torch.float32).min):  # additive: 0 = attend
        additive = torch.zeros(1, 1, 8, 8).masked_fill(~keep, blocked)
        torch.testing.assert_close(model(x, attention_mask=additive).logits, ref, rtol=0, atol=1e-6)


def test_all_zero_float_mask_is_additive_attend_everywhere():
    """Ambiguous between the two conventions; read as additive (SDAR's rule would block every key)."""
    model = small_model()
    x = torch.randint(0, 48, (2, 8))
    torch.testing.assert_close(model(x, attention_mask=torch.zeros(2, 1, 8, 8)).logits, model(x).logits,
                               rtol=0, atol=1e-6)


def test_mask_of_wrong_rank_or_too_few_keys_is_refused():
    model = small_model()
    x = torch.randint(0, 48, (1, 8))
    with pytest.raises(ValueError, match="2-D, 3-D or 4-D"):
        model(x, attention_mask=torch.ones(1, 1, 1, 8, 8))
    with pytest.raises(ValueError, match="covers 6 keys but attention has 8"):
        model(x, attention_mask=torch.ones(1, 8, 6))


# ---------------------------------------------------------------- dynamic RoPE


def ntk_inv_freq(theta, dim, factor, max_pos, seq_len):
    """The NTK-aware formula written out in float64."""
    base = theta * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2))
    return base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)


def test_dynamic_rope_rescales_past_max_position_embeddings_like_the_original():
    model = small_model(rope_scaling={"type": "dynamic", "factor": 2.0}, max_position_embeddings=16)
    plain = small_model(max_position_embeddings=16)  # same weights, plain RoPE
    rope = model.model.rotary_emb
    default = 10000.0 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    x = torch.randint(0, 48, (1, 24))
    keep = block_causal(24)[None, None]

    def run(n, **kw):
        return model(x[:, :n], attention_mask=keep[..., :n, :n], **kw).logits

    torch.testing.assert_close(rope.inv_freq.double(), default, rtol=1e-6, atol=0)
    assert torch.equal(run(12), plain(x[:, :12], attention_mask=keep[..., :12, :12]).logits)  # below: unchanged
    long = run(24)  # seq_len 24 > 16: base = 1e4 * (2 * 24/16 - 1) ** (8/6)
    torch.testing.assert_close(rope.inv_freq.double(), ntk_inv_freq(1e4, 8, 2.0, 16, 24), rtol=1e-6, atol=0)
    assert not torch.allclose(long, plain(x, attention_mask=keep).logits, atol=1e-3)
    scaled_24 = rope.inv_freq.clone()
    run(20)  # 16 < 20 < 24: the original keeps the frequencies of the longest sequence seen
    assert torch.equal(rope.inv_freq, scaled_24)
    run(12)  # back below max_position_embeddings: original frequencies again
    torch.testing.assert_close(rope.inv_freq.double(), default, rtol=1e-6, atol=0)
    # The longest *position* counts, not the number of tokens (a block decoded against a cache).
    model(x[:, :4], position_ids=torch.arange(30, 34)[None])
    torch.testing.assert_close(rope.inv_freq.double(), ntk_inv_freq(1e4, 8, 2.0, 16, 34), rtol=1e-6, atol=0)


def qwen3_twin(model):
    """transformers' Qwen3 (what SDAR's remote code was derived from) with the same weights and RoPE."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    c = model.config
    twin = Qwen3ForCausalLM(Qwen3Config(**SMALL | dict(max_position_embeddings=c.max_position_embeddings),
                                        rope_theta=c.rope_theta, rope_scaling=c.rope_scaling,
                                        attn_implementation="sdpa"))
    twin.load_state_dict(model.state_dict())
    return twin.eval()


@pytest.mark.parametrize("rope_scaling", [None, {"type": "dynamic", "factor": 2.0}, {"type": "linear", "factor": 3.0}])
def test_logits_bit_identical_to_qwen3_with_the_same_weights(rope_scaling):
    model = small_model(rope_scaling=rope_scaling, max_position_embeddings=16)
    twin = qwen3_twin(model)
    x = torch.randint(0, 48, (2, 24))  # past max_position_embeddings
    for n in (24, 12, 20):  # growth, reset, and a length in between
        mask = block_causal(n)[None, None]
        assert torch.equal(model(x[:, :n], attention_mask=mask).logits, twin(x[:, :n], attention_mask=mask).logits)


# ---------------------------------------------------------------- store_kv


def test_store_kv_follows_the_original_sampler_protocol_on_the_block_cache():
    """SDAR's generate.py: prefill with store_kv=True, denoise with store_kv=False, commit with store_kv=True;
    float 0/1 masks sliced from one [1, n, n] block-causal matrix."""
    model = small_model()
    B, n = 4, 16
    seq = torch.randint(4, 48, (1, n))
    mask = torch.tril(torch.ones(n // B, n // B)).repeat_interleave(B, 0).repeat_interleave(B, 1)[None]
    pos = torch.arange(n)[None]
    full = model(seq, attention_mask=mask, position_ids=pos).logits
    cache = SDARBlockCache(model.config, 1, n)
    model(seq[:, :8], attention_mask=mask[:, :8, :8], position_ids=pos[:, :8], past_key_values=cache,
          use_cache=True, store_kv=True)
    assert cache.length == 8
    for start in (8, 12):
        block, seen = slice(start, start + B), mask[:, start:start + B, :start + B]
        for _ in range(2):  # denoising steps attend to cache + block and store nothing
            out = model(seq[:, block], attention_mask=seen, position_ids=pos[:, block], past_key_values=cache,
                        use_cache=True, store_kv=False).logits
            assert cache.length == start
            assert (out - full[:, block]).abs().max().item() <= 1e-5
        # positions default to the cache length, as in the original
        out = model(seq[:, block], attention_mask=seen, past_key_values=cache, store_kv=True).logits
        assert cache.length == start + B
        assert (out - full[:, block]).abs().max().item() <= 1e-5


def test_store_kv_misuse_is_refused():
    model = small_model()
    x = torch.randint(0, 48, (1, 4))
    with pytest.raises(ValueError, match="store_kv=True needs past_key_values=SDARBlockCache"):
        model(x, store_kv=True)
    with pytest.raises(ValueError, match="store_kv .* or commit_kv, not both"):
        model(x, past_key_values=SDARBlockCache(model.config, 1, 8), store_kv=False, commit_kv=4)
    from transformers import DynamicCache

    with pytest.raises(ValueError, match=r"must be an SDARBlockCache, got DynamicCache .*SDARBlockCache\(model.config"):
        model(x, past_key_values=DynamicCache(), store_kv=True)
    assert model(x, store_kv=False).logits.shape == (1, 4, 48)  # no cache, nothing to store: as the original


# ---------------------------------------------------------------- configs and loading, transformers 4 and 5

# JetLM/SDAR-1.7B-Chat's config.json with tiny sizes (and ids inside the tiny vocabulary); every other key as shipped.
REAL_SDAR_CONFIG = {
    "architectures": ["SDARForCausalLM"],
    "auto_map": {"AutoConfig": "configuration_sdar.SDARConfig", "AutoModel": "modeling_sdar.SDARModel",
                 "AutoModelForCausalLM": "modeling_sdar.SDARForCausalLM"},
    "attention_bias": False, "attention_dropout": 0.0, "attn_implementation": "flex_attention", "bos_token_id": 40,
    "debug": False, "eos_token_id": 40, "block_size": 4, "mask_token_id": 47, "ep_size": 1,
    "fuse_cross_entropy": True, "head_dim": 8, "hidden_act": "silu", "hidden_size": 32, "initializer_range": 0.02,
    "intermediate_size": 64, "max_position_embeddings": 32768, "max_window_layers": 28, "micro_forward": False,
    "model_type": "sdar", "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000, "skip_checkpoint": False,
    "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.52.4",
    "use_cache": False, "use_deepep": False, "use_sliding_window": False, "vocab_size": 48,
}


def write_checkpoint(path, config):
    """config.json exactly as given + weights drawn from a fixed generator (independent of transformers' init)."""
    fields = {k: v for k, v in config.items() if k not in ("architectures", "auto_map", "model_type")}
    shapes = {k: v.shape for k, v in SDARForCausalLM(SDARConfig(**fields)).state_dict().items()}
    g = torch.Generator().manual_seed(0)
    weights = {k: torch.randn(shapes[k], generator=g) * 0.2 + k.endswith("norm.weight") for k in sorted(shapes)}
    if config.get("tie_word_embeddings"):
        del weights["lm_head.weight"]
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config))
    return weights


def load(path):
    from t3d.model.checkpoint import load_model

    return load_model(str(path))  # fp32, as the toolkit loads


# logits[0, :3, :3] of input arange(12) % 48 for the seeded weights; the same under transformers 4.57.6 and 5.24.0
REAL_LOGITS = [[-0.6681, -0.3836, -1.8222], [1.4064, 0.4615, 0.1334], [0.1424, 0.3408, -0.6765]]
TINY_LOGITS = [[-1.835, -0.0136, 0.0868], [1.7168, 3.9679, 0.3168], [-2.8791, -0.6626, -0.9055]]


def test_real_sdar_config_json_loads_with_sdar_semantics(tmp_path):
    weights = write_checkpoint(tmp_path, REAL_SDAR_CONFIG)
    model = load(tmp_path)
    c = model.config
    assert type(model) is SDARForCausalLM and model.dtype == torch.float32
    assert (c.rope_theta, c.rope_scaling, c.tie_word_embeddings, c.use_cache) == (1e6, None, False, False)
    assert (c.fuse_cross_entropy, c.block_size, c.mask_token_id, c.sliding_window) == (True, 4, 47, None)
    # "auto": the file asks for flex_attention, which off CUDA runs unfused, so SDPA; an explicit choice wins
    assert c._attn_implementation == "sdpa"
    from t3d.model.checkpoint import load_model

    assert load_model(str(tmp_path), attn_implementation="flex_attention").config._attn_implementation == "flex_attention"
    assert load_model(str(tmp_path), training=True).config._attn_implementation == "sdpa"  # no CPU backward
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    assert torch.equal(model.lm_head.weight, weights["lm_head.weight"])
    inv_freq = 1e6 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    torch.testing.assert_close(model.model.rotary_emb.inv_freq.double(), inv_freq, rtol=1e-6, atol=0)
    logits = model(torch.arange(12)[None] % 48).logits
    torch.testing.assert_close(logits[0, :3, :3], torch.tensor(REAL_LOGITS), rtol=0, atol=2e-4)


def test_tiny_default_config_loads_tied_with_the_same_logits(tmp_path):
    config = json.loads(open("models/sdar-tiny/config.json").read())
    write_checkpoint(tmp_path, config)
    model = load(tmp_path)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied, as configured
    logits = model(torch.arange(12)[None] % config["vocab_size"]).logits
    torch.testing.assert_close(logits[0, :3, :3], torch.tensor(TINY_LOGITS), rtol=0, atol=2e-4)


def test_saved_config_keeps_sdars_schema_and_reads_transformers5_style_files(tmp_path):
    model = small_model(rope_theta=5e5, rope_scaling={"type": "dynamic", "factor": 2.0})
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["rope_theta"], saved["rope_scaling"]["factor"], saved["rope_scaling"]["rope_type"]) == \
        (5e5, 2.0, "dynamic")
    assert "rope_parameters" not in saved  # SDAR's own code and transformers 4 read rope_theta / rope_scaling
    loaded = SDARConfig.from_pretrained(tmp_path)
    assert (loaded.rope_theta, loaded.rope_scaling) == (model.config.rope_theta, model.config.rope_scaling)
    # a config written by a transformers-5 tool carries only the standardised dict
    del saved["rope_theta"], saved["rope_scaling"]
    saved["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = SDARConfig.from_pretrained(tmp_path)
    assert (loaded.rope_theta, loaded.rope_scaling, loaded.rope_parameters["rope_type"]) == (1e6, None, "default")


def test_unsupported_rope_type_is_refused():
    with pytest.raises(ValueError, match="rope_scaling type 'longrope' is not supported"):
        small_model(rope_scaling={"rope_type": "longrope", "short_factor": [1.0] * 4, "long_factor": [1.0] * 4})
