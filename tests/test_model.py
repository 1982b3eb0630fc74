import json

import pytest
import torch

import models  # noqa: F401  (Auto registration)
from t3d.model.sdar import SDARBlockCache, SDARConfig, SDARForCausalLM, sdar_attention
from t3d.model.masks import block_attention_mask, pad_sequences, training_layout

SMALL = dict(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8, max_position_embeddings=128)


def small_model(seed=0, **kw):
    torch.manual_seed(seed)
    return SDARForCausalLM(SDARConfig(**{**SMALL, **kw})).eval()


def test_config_defaults_match_spec():
    c = SDARConfig()
    assert (c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers) == (151936, 4096, 22016, 32)
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.hidden_act) == (32, 32, 128, "silu")
    assert (c.max_position_embeddings, c.initializer_range, c.rms_norm_eps, c.use_cache) == (32768, 0.02, 1e-6, True)
    assert (c.tie_word_embeddings, c.rope_theta, c.rope_scaling, c.attention_bias) == (False, 10000.0, None, False)
    assert (c.use_sliding_window, c.sliding_window, c.max_window_layers, c.attention_dropout) == (False, 4096, 28, 0.0)
    assert SDARConfig(num_key_value_heads=None, num_attention_heads=8).num_key_value_heads == 8
    assert c.model_type == "sdar"


def test_state_dict_names_and_shapes_match_sdar_checkpoints():
    model = small_model()
    H, KV, hd, hid, inter, V = 4, 2, 8, 32, 64, 48
    expected = {"model.embed_tokens.weight": (V, hid), "model.norm.weight": (hid,), "lm_head.weight": (V, hid)}
    for i in range(2):
        p = f"model.layers.{i}."
        expected.update({
            p + "self_attn.q_proj.weight": (H * hd, hid), p + "self_attn.k_proj.weight": (KV * hd, hid),
            p + "self_attn.v_proj.weight": (KV * hd, hid), p + "self_attn.o_proj.weight": (hid, H * hd),
            p + "self_attn.q_norm.weight": (hd,), p + "self_attn.k_norm.weight": (hd,),
            p + "mlp.gate_proj.weight": (inter, hid), p + "mlp.up_proj.weight": (inter, hid),
            p + "mlp.down_proj.weight": (hid, inter), p + "input_layernorm.weight": (hid,),
            p + "post_attention_layernorm.weight": (hid,),
        })
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    with_bias = small_model(attention_bias=True).state_dict()
    assert with_bias["model.layers.0.self_attn.q_proj.bias"].shape == (H * hd,)
    assert with_bias["model.layers.0.self_attn.o_proj.bias"].shape == (hid,)


def test_auto_class_round_trip(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    model = small_model()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert isinstance(AutoConfig.from_pretrained(tmp_path), SDARConfig)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is SDARForCausalLM
    x = torch.randint(0, 48, (2, 9))
    torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=0, atol=0)


def test_checkpoint_with_auto_map_loads_without_remote_code(tmp_path):
    """A downloaded SDAR dir names its own modeling files in auto_map; ours must be used instead."""
    from transformers import AutoModelForCausalLM

    small_model().save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "configuration_sdar.SDARConfig",
                       "AutoModelForCausalLM": "modeling_sdar.SDARForCausalLM"}
    cfg["fuse_cross_entropy"] = True  # real checkpoints carry it; harmless here
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path)) is SDARForCausalLM


def test_logits_are_not_shifted_and_labels_give_plain_cross_entropy():
    model = small_model()
    x = torch.randint(0, 48, (1, 6))
    out = model(x, labels=x)
    expected = torch.nn.functional.cross_entropy(out.logits[0], x[0])
    torch.testing.assert_close(out.loss, expected)


def test_mask_formats_agree_and_none_means_bidirectional():
    model = small_model()
    x = torch.randint(0, 48, (2, 8))
    pos = torch.arange(8)[None].expand(2, -1)
    flags = torch.zeros(2, 8, dtype=torch.bool)
    bool_mask = block_attention_mask(pos, flags, ~flags, pos, flags, ~flags, 4)
    additive = torch.zeros(bool_mask.shape).masked_fill(~bool_mask, float("-inf"))
    ref = model(x, attention_mask=bool_mask).logits
    torch.testing.assert_close(model(x, attention_mask=additive).logits, ref)
    torch.testing.assert_close(model(x, attention_mask=bool_mask.long()).logits, ref)  # 0/1 ints, 1 = attend
    full = model(x).logits
    torch.testing.assert_close(model(x, attention_mask=torch.ones(2, 8, dtype=torch.long)).logits, full)
    assert not torch.allclose(full, ref)  # block-causal differs from no mask


def test_training_mask_equals_hand_written_matrix():
    # prompt [1,2,3] (P=3), response [9,9] (+1 pad), B=2: blocks by absolute position
    P, _ = pad_sequences([[1, 2, 3], [4, 5, 6, 7, 8]], 0, left=True)
    R, rl = pad_sequences([[9, 9], [8, 8, 8]], 0)
    out = training_layout(P, torch.tensor([3, 5]), R, rl, torch.full_like(R, 99), 2)
    assert out["input_ids"][0].tolist() == [0, 0, 1, 2, 3, 9, 9, 0, 3, 99, 99, 99]
    assert out["position_ids"][0].tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 2, 3, 4, 5]
    assert out["noisy_slice"] == slice(9, 12)
    expected = torch.tensor([
        # pads  prompt  clean r  tail noisy r
        [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # left pad: itself only
        [0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0],  # prompt pos 0 (block 0)
        [0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0],  # prompt pos 1 (block 0)
        [0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0],  # prompt pos 2 (block 1) sees clean block 1
        [0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0],  # clean response pos 3 (block 1)
        [0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0],  # clean response pos 4 (block 2)
        [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0],  # response pad
        [0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0],  # tail copy pos 2: clean blocks < 1 + its noisy block
        [0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0],  # noisy pos 3 (block 1)
        [0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 0],  # noisy pos 4 (block 2)
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],  # noisy pad
    ], dtype=torch.bool)
    assert torch.equal(out["attention_mask"][0, 0], expected)


def test_noisy_block_never_sees_its_clean_twin():
    """Response inside one block (toy-notes pitfall): changing the clean response must not change noisy logits."""
    model = small_model()
    P, pl = pad_sequences([[5, 6, 7, 8, 9, 10]], 0, left=True)  # P=6, B=4: tail of 2 shares the block
    noisy = torch.tensor([[3, 3]])
    logits = []
    for clean in ([11, 12], [40, 41]):
        R, rl = pad_sequences([clean], 0)
        lay = training_layout(P, pl, R, rl, noisy, 4)
        logits.append(model(lay["input_ids"], attention_mask=lay["attention_mask"],
                            position_ids=lay["position_ids"], logits_to_keep=lay["noisy_slice"]).logits)
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=0)


def test_block_cache_matches_full_recompute():
    """Prefill + active block against the cache (and commit folded into the next forward) == full sequence."""
    model = small_model()
    B = 4
    seq = torch.randint(4, 48, (2, 16))  # 3 committed blocks + 1 active block
    pos = torch.arange(16)[None].expand(2, -1)
    noisy = pos >= 12
    valid = torch.ones_like(noisy)
    full_mask = block_attention_mask(pos, noisy, valid, pos, noisy, valid, B)
    full = model(seq, attention_mask=full_mask, position_ids=pos).logits[:, 12:]

    def masked_forward(q, cache, commit):
        mask = block_attention_mask(pos[:, q], noisy[:, q], valid[:, q], pos[:, :q.stop], noisy[:, :q.stop],
                                    valid[:, :q.stop], B)
        return model(seq[:, q], attention_mask=mask, position_ids=pos[:, q], past_key_values=cache,
                     commit_kv=commit).logits

    cache = SDARBlockCache(model.config, 2, 16)
    masked_forward(slice(0, 8), cache, commit=8)  # prefill blocks 0-1
    # block 2 committed inside block 3's first denoising forward (its 4 tokens ride along)
    first = masked_forward(slice(8, 16), cache, commit=4)[:, 4:]
    again = masked_forward(slice(12, 16), cache, commit=0)  # later steps: active block only
    again2 = masked_forward(slice(12, 16), cache, commit=0)  # ... which never modifies the cache
    assert cache.length == 12
    for cached in (first, again, again2):
        assert (full - cached).abs().max().item() <= 1e-5


def test_gradient_checkpointing_gives_same_gradients():
    x = torch.randint(0, 48, (2, 8))
    grads = []
    for ckpt in (False, True):
        model = small_model().train()
        if ckpt:
            model.gradient_checkpointing_enable()
        model(x, labels=x).loss.backward()
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_bf16_forward_backward():
    model = small_model().to(torch.bfloat16).train()
    x = torch.randint(0, 48, (2, 8))
    out = model(x, labels=x)
    out.loss.backward()
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)


def test_flex_attention_matches_sdpa_forward():
    pytest.importorskip("torch.nn.attention.flex_attention")
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 16, 8), torch.randn(2, 2, 16, 8), torch.randn(2, 2, 16, 8)
    pos = torch.arange(16)[None].expand(2, -1)
    flags = pos >= 8
    mask = block_attention_mask(pos, flags, torch.ones_like(flags), pos, flags, torch.ones_like(flags), 4)
    ref = sdar_attention(q, k, v, mask, 8**-0.5, "sdpa")
    try:
        flex = sdar_attention(q, k, v, mask, 8**-0.5, "flex_attention")
    except Exception as err:  # pragma: no cover - depends on the torch build
        pytest.skip(f"flex attention unavailable on this build: {err}")
    torch.testing.assert_close(flex, ref, atol=1e-5, rtol=1e-5)


def test_fast_mask_equals_the_rule_written_out():
    from t3d.model.masks import _block_attention_mask_reference

    g = torch.Generator().manual_seed(0)
    for Q, K in ((12, 12), (4, 20), (8, 24)):
        pos_k = torch.randint(0, 9, (3, K), generator=g)
        flags_k = torch.rand(3, K, generator=g) < 0.5
        valid_k = torch.rand(3, K, generator=g) < 0.8
        if Q == K:
            pos_q, flags_q, valid_q = pos_k, flags_k, valid_k
        else:
            pos_q = torch.randint(0, 9, (3, Q), generator=g)
            flags_q, valid_q = torch.rand(3, Q, generator=g) < 0.5, torch.rand(3, Q, generator=g) < 0.8
        for B in (1, 2, 4):
            args = (pos_q, flags_q, valid_q, pos_k, flags_k, valid_k, B)
            assert torch.equal(block_attention_mask(*args), _block_attention_mask_reference(*args))


def _head_ops(model, **forward_kwargs):
    """(name, input shapes) of every op a forward runs, from torch.profiler."""
    from torch.profiler import profile

    with torch.no_grad(), profile(record_shapes=True) as prof:
        logits = model(**forward_kwargs).logits
    return logits, [(e.name, str(e.input_shapes)) for e in prof.events()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_head_on_kept_positions_is_one_matmul_even_when_frozen(dtype):
    """Decoding keeps the last B positions (a strided slice); with every weight frozen (a merged adapter) a 3-D
    strided input made matmul run bmm over the head weight expanded per batch row (a [b, H, V] copy per forward).
    The head must see contiguous 2-D rows: no bmm/expand touching the vocabulary dimension, whatever grads."""
    V = 1031  # a size no other tensor has, so any op that mentions it belongs to the head
    model = small_model(vocab_size=V).to(dtype).requires_grad_(False)
    x = torch.randint(0, V, (4, 12))
    full = model(x).logits
    for keep in (4, slice(-4, None), torch.tensor([1, 5, 11])):
        logits, ops = _head_ops(model, input_ids=x, logits_to_keep=keep)
        on_head = [name for name, shapes in ops if str(V) in shapes]
        assert "aten::bmm" not in on_head and "aten::expand" not in on_head, on_head
        assert "aten::mm" in on_head or "aten::addmm" in on_head, on_head
        where = slice(-keep, None) if isinstance(keep, int) else keep
        torch.testing.assert_close(logits, full[:, where], rtol=0, atol=0 if dtype == torch.float32 else 1e-2)
