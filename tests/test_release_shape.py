"""What a user pointing the toolkit at a downloaded SDAR-4B-Chat meets, at the real shape (hidden 2,560, 32 heads,
8 KV heads, vocabulary 151,936, the real tokenizer and chat template, sharded bf16 safetensors) with 1 layer."""
import json

import pytest
import torch
from safetensors import safe_open

from t3d.model.checkpoint import load, stop_token_ids
from tests.release_checkpoint import ckpt, require_release  # noqa: F401  (ckpt: fixture)

IM_START, IM_END, ENDOFTEXT, MASK = 151644, 151645, 151643, 151669


@pytest.fixture(scope="module")
def loaded_bf16(ckpt):
    return load(str(ckpt), "bf16")


def test_files_keep_the_release_layout(ckpt):
    release = require_release()
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    real = json.loads((release / "model.safetensors.index.json").read_text())["weight_map"]
    assert index["weight_map"] == {k: v for k, v in real.items() if not k.startswith("model.layers.")
                                   or k.startswith("model.layers.0.")}
    assert sorted(set(index["weight_map"].values())) == ["model-00001-of-00002.safetensors",
                                                         "model-00002-of-00002.safetensors"]
    for shard in set(index["weight_map"].values()):
        with safe_open(str(ckpt / shard), "pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    config = json.loads((ckpt / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["attn_implementation"] == "flex_attention"
    assert (config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"],
            config["vocab_size"]) == (2560, 32, 8, 151936)


def test_tokenizer_mask_and_stop_tokens(loaded_bf16):
    model, tokenizer, _ = loaded_bf16
    assert tokenizer.mask_token == "<|MASK|>" and tokenizer.mask_token_id == MASK == model.config.mask_token_id
    vocab = tokenizer.get_vocab()
    assert (vocab["<|im_end|>"], vocab["<|endoftext|>"], vocab["<|im_start|>"]) == (IM_END, ENDOFTEXT, IM_START)
    assert stop_token_ids(tokenizer) == [ENDOFTEXT, IM_END]  # both end a response
    assert tokenizer.pad_token_id == ENDOFTEXT
    assert len(tokenizer) <= model.config.vocab_size


def test_chat_template(loaded_bf16):
    from t3d.tasks.prompting import build_prompt, encode_prompt

    _, tokenizer, _ = loaded_bf16
    text = build_prompt(tokenizer, {"question": "Compute 47+38."}, "math")
    assert text.startswith("<|im_start|>user\n") and text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert "Compute 47+38." in text
    ids = encode_prompt(tokenizer, text)
    assert ids[0] == IM_START and ids[-3:-1] == [IM_START, tokenizer.convert_tokens_to_ids("assistant")]
    assert ids.count(IM_END) == 1 and MASK not in ids


def test_dtypes_attention_and_logits_through_load(ckpt, loaded_bf16):
    model, tokenizer, path = loaded_bf16
    assert path == str(ckpt)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    # the release config asks for flex_attention; off CUDA auto runs SDPA (FlexAttention is unfused there)
    assert json.loads((ckpt / "config.json").read_text())["attn_implementation"] == "flex_attention"
    assert model.config._attn_implementation == "sdpa"
    ids = torch.tensor([[IM_START, 872, 198, 1, 2, 3, MASK, MASK]])
    mask = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    with torch.no_grad():
        sdpa = model(ids, attention_mask=mask).logits
        model.config._attn_implementation = "flex_attention"  # the same weights through FlexAttention (runs on CPU)
        try:
            logits = model(ids, attention_mask=mask).logits
        finally:
            model.config._attn_implementation = "sdpa"
    assert logits.shape == (1, 8, 151936) and logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    torch.testing.assert_close(logits.float(), sdpa.float(), rtol=0, atol=0.05)  # bf16 kernels round apart


@pytest.mark.slow
def test_fp32_load_matches_bf16_weights(ckpt, loaded_bf16):
    model32, _, _ = load(str(ckpt))
    assert {p.dtype for p in model32.parameters()} == {torch.float32}
    for p, q in zip(model32.parameters(), loaded_bf16[0].parameters()):
        assert torch.equal(p.to(torch.bfloat16), q)


def test_saved_checkpoint_tokenizer_loads_without_the_false_mistral_warning(ckpt, tmp_path):
    """transformers 4.57.3+ flags any local tokenizer whose config.json was written by those versions as Mistral's
    "incorrect regex pattern"; load_tokenizer loads SDAR's without that false warning, tokenizes exactly as the
    release does, and does not write the flag into what it saves."""
    import shutil
    import subprocess
    import sys

    for f in ckpt.iterdir():  # the checkpoint without its weights
        if f.is_file() and "safetensors" not in f.name:
            shutil.copy(f, tmp_path / f.name)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(config, transformers_version="4.57.6")))
    code = ("import sys; from t3d.model.checkpoint import load_tokenizer; from transformers import AutoTokenizer; "
            "t = load_tokenizer(sys.argv[1]); r = AutoTokenizer.from_pretrained(sys.argv[2]); "
            "text = 'Compute 12+30, then \u00e9t\u00e9 <|im_end|>\\n'; assert t(text).input_ids == r(text).input_ids; "
            "t.save_pretrained(sys.argv[3]); print('ok')")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(require_release()), str(tmp_path / "saved")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
    assert "incorrect regex pattern" not in out.stderr
    assert "fix_mistral_regex" not in (tmp_path / "saved" / "tokenizer_config.json").read_text()
