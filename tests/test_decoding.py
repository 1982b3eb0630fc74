import pytest
import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from t3d.model.sdar import SDARConfig
from t3d.decode.decoder import DecodeConfig, generate, hash_uniform, sample_tokens, sequence_seeds, unmask_schedule
from t3d.tasks.prompting import build_prompt, encode_prompt

MASK, PAD, V = 3, 0, 32


class PositionModel(nn.Module):
    """Deterministic stand-in: at position p it predicts token 10 + p % 7 with logit 1 + (3p) % 4.

    So inside a 4-block the confidence order of offsets is 1 > 2 > 3 > 0, which makes step maps
    hand-checkable. It honours the cache protocol (commit) and logits_to_keep like SDARForCausalLM.
    """

    def __init__(self):
        super().__init__()
        self.config = SDARConfig(vocab_size=V, num_hidden_layers=0, num_key_value_heads=1, head_dim=2)
        self.dummy = nn.Parameter(torch.zeros(1))
        self.calls = []

    def forward(self, input_ids, position_ids, attention_mask, past_key_values=None, commit_kv=0, logits_to_keep=0):
        self.calls.append(input_ids.shape[1])
        pos = position_ids[:, -logits_to_keep:]
        logits = torch.zeros(*pos.shape, V)
        logits.scatter_(-1, (10 + pos % 7)[..., None], (1.0 + (3 * pos) % 4)[..., None])
        if past_key_values is not None:
            past_key_values.commit(commit_kv)
        return CausalLMOutputWithPast(logits=logits)


def run(prompts, steps, max_new=8, **kw):
    cfg = DecodeConfig(block_size=4, steps_per_block=steps, max_new_tokens=max_new, **kw)
    return generate(PositionModel(), prompts, cfg, mask_id=MASK, pad_id=PAD, stop_ids=kw.pop("stop", ()))


def test_unmask_schedule():
    assert unmask_schedule(4, 4) == [1, 1, 1, 1]
    assert unmask_schedule(4, 2) == [2, 2]
    assert unmask_schedule(4, 1) == [4]
    assert unmask_schedule(4, 3) == [2, 1, 1]
    assert unmask_schedule(8, 3) == [3, 3, 2]
    assert unmask_schedule(2, 4) == [1, 1, 0, 0]


@pytest.mark.parametrize("steps, expected_steps, expected_nfe", [
    (4, [4, 1, 2, 3, 8, 5, 6, 7], 9),  # one token per step, most confident first
    (2, [2, 1, 1, 2, 4, 3, 3, 4], 5),
    (1, [1, 1, 1, 1, 2, 2, 2, 2], 3),
])
def test_exact_step_maps_static(steps, expected_steps, expected_nfe):
    out = run([[20, 21, 22, 23]], steps)  # P = 4: no prompt tail
    assert out.step_maps == [expected_steps]
    assert out.token_ids == [[10 + p % 7 for p in range(4, 12)]]
    assert out.nfe == [expected_nfe]  # 1 prefill + steps actually used
    assert out.prefill_nfe == [1]
    assert out.finished == [False]


def test_prefill_is_counted_only_for_prompts_with_a_complete_block():
    cfg = DecodeConfig(block_size=4, steps_per_block=2, max_new_tokens=6)
    out = generate(PositionModel(), [[20, 21], [20, 21, 22, 23, 24]], cfg, mask_id=MASK, pad_id=PAD)
    assert out.prefill_nfe == [0, 1]  # P = 2: nothing to prefill; P = 5: one complete block
    assert out.nfe == [1 + 2, 1 + 2 + 2]  # P = 2: the first block's 2 masks go in its first step (2 per step)
    out = generate(PositionModel(), [[20, 21, 22, 23]], cfg, mask_id=MASK, pad_id=PAD, mode="recompute")
    assert out.prefill_nfe == [0]  # no cache: every step re-reads the prompt, no separate prefill


def test_prompt_tail_is_never_overwritten_and_gets_no_step():
    prompt = [20, 21, 22, 23, 24, 25]  # P = 6: tail of 2 shares the first block
    for steps in (4, 2, 1):
        model = PositionModel()
        cfg = DecodeConfig(block_size=4, steps_per_block=steps, max_new_tokens=6)
        out = generate(model, [prompt], cfg, mask_id=MASK, pad_id=PAD)
        assert out.token_ids == [[16, 10, 11, 12, 13, 14]]  # positions 6..11 only
        assert len(out.step_maps[0]) == 6
    out = run([prompt], 4, max_new=6)
    assert out.step_maps == [[1, 2, 6, 3, 4, 5]]  # block 1: 2 masks in 2 steps; block 2: offsets 1,2,3,0
    assert out.nfe == [1 + 2 + 4]


def test_dynamic_threshold_unmasks_every_confident_position():
    # confidences at offsets 1,2,3,0: 0.64, 0.39, 0.19, 0.08; tau = 0.3 takes offsets 1 and 2 at once
    out = run([[20, 21, 22, 23]], 4, strategy="low_confidence_dynamic", dynamic_threshold=0.3)
    assert out.step_maps == [[3, 1, 1, 2, 6, 4, 4, 5]]
    assert out.nfe == [1 + 3 + 3]


def test_stops_at_eos_and_at_max_new_tokens():
    cfg = DecodeConfig(block_size=4, steps_per_block=1, max_new_tokens=8)
    out = generate(PositionModel(), [[20, 21, 22, 23]], cfg, mask_id=MASK, pad_id=PAD, stop_ids=[12])
    assert out.token_ids == [[14, 15, 16, 10, 11, 12]] and out.finished == [True]  # 12 is predicted at position 9
    out = run([[20, 21, 22, 23]], 1, max_new=6)
    assert out.token_ids == [[14, 15, 16, 10, 11, 12]] and out.finished == [False]
    assert out.step_maps == [[1, 1, 1, 1, 2, 2]]


def test_commit_is_folded_into_the_next_forward():
    model = PositionModel()
    generate(model, [[20, 21, 22, 23]], DecodeConfig(block_size=4, steps_per_block=2, max_new_tokens=12),
             mask_id=MASK, pad_id=PAD)
    # prefill 4; block 1: 4, 4; block 2: 8 (block 1 rides along), 4; block 3: 8, 4
    assert model.calls == [4, 4, 4, 8, 4, 8, 4]
    model = PositionModel()
    generate(model, [[20, 21, 22, 23]], DecodeConfig(block_size=4, steps_per_block=2, max_new_tokens=12),
             mask_id=MASK, pad_id=PAD, mode="cached_save_pass")
    assert model.calls == [4, 4, 4, 4, 4, 4, 4, 4, 4]  # the reference's extra save pass per block


def test_greedy_and_sampling_helpers():
    logits = torch.tensor([[[0.0, 2.0, 1.0, -1.0]]])
    tok, conf = sample_tokens(logits, DecodeConfig(temperature=0.0), torch.tensor([[0.5]]))
    assert tok.tolist() == [[1]] and conf.item() == pytest.approx(torch.softmax(logits[0, 0], 0)[1].item())
    # top_k = 1 always samples the argmax, whatever the uniform
    for u in (0.01, 0.99):
        tok, conf = sample_tokens(logits, DecodeConfig(temperature=1.0, top_k=1), torch.tensor([[u]]))
        assert tok.item() == 1 and conf.item() == pytest.approx(1.0)
    # top_p keeps the smallest prefix reaching p: {1, 2} here; u near 1 then lands on token 2, never 0 or 3
    tok, _ = sample_tokens(logits, DecodeConfig(temperature=1.0, top_p=0.8), torch.tensor([[0.999]]))
    assert tok.item() == 2
    u = hash_uniform(torch.arange(1000), 7)
    assert 0 < u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.05
    assert torch.equal(sequence_seeds(3, [0, 1, 2]), sequence_seeds(3, [0, 1, 2]))


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="remasking_strategy"):
        DecodeConfig(strategy="default")
    with pytest.raises(ValueError, match="top_p"):
        DecodeConfig(top_p=0.0)
    with pytest.raises(ValueError, match="denoising_steps_per_block=5 exceeds block_size=4"):
        DecodeConfig(block_size=4, steps_per_block=5)
    with pytest.raises(ValueError, match="temperature"):
        DecodeConfig(temperature=float("nan"))
    with pytest.raises(ValueError, match="dynamic_threshold"):
        DecodeConfig(dynamic_threshold=0.0)


@pytest.fixture(scope="module")
def prompts(tiny):
    _, tok = tiny
    questions = ["What is 47+38?", "Compute 5*7", "hi", "What is the sum of 123 and 456, then times 3?"]
    return [encode_prompt(tok, build_prompt(tok, {"question": q}, "math")) for q in questions]


@pytest.mark.parametrize("steps, temperature, strategy", [
    (4, 0.0, "low_confidence_static"), (2, 0.0, "low_confidence_static"), (1, 0.0, "low_confidence_static"),
    (4, 1.0, "low_confidence_static"), (2, 0.7, "low_confidence_dynamic"),
])
def test_cached_decoding_equals_full_recompute(tiny, prompts, steps, temperature, strategy):
    model, tok = tiny
    cfg = DecodeConfig(block_size=4, steps_per_block=steps, max_new_tokens=14, temperature=temperature,
                       strategy=strategy, dynamic_threshold=0.05)
    outs = [generate(model, prompts, cfg, mask_id=tok.mask_token_id, pad_id=tok.pad_token_id, seeds=[5, 6, 7, 8],
                     mode=mode) for mode in ("cached", "cached_save_pass", "recompute")]
    for other in outs[1:]:
        assert other.token_ids == outs[0].token_ids and other.step_maps == outs[0].step_maps
    cached = outs[0]
    tails = [len(p) % 4 for p in prompts]
    for ids, steps_map, nfe, tail in zip(cached.token_ids, cached.step_maps, cached.nfe, tails):
        assert len(ids) == len(steps_map) == 14
        if strategy == "low_confidence_static":
            first = min(steps, 4 - tail)  # masks run out early in the shared first block
            blocks = -(-(14 - (4 - tail)) // 4)  # the rest, in whole blocks
            assert nfe == 1 + first + steps * blocks
        assert 1 <= min(steps_map) and max(steps_map) <= nfe - 1  # the cut tail of the last block is dropped


def test_same_seed_same_output_and_batch_independence(tiny, prompts):
    model, tok = tiny
    cfg = DecodeConfig(block_size=4, steps_per_block=2, max_new_tokens=10, temperature=1.0, random_init_ratio=0.5)
    kw = dict(mask_id=tok.mask_token_id, pad_id=tok.pad_token_id, vocab_for_random=len(tok))
    a = generate(model, prompts, cfg, seeds=[1, 2, 3, 4], **kw)
    b = generate(model, prompts, cfg, seeds=[1, 2, 3, 4], **kw)
    solo = generate(model, prompts[2:3], cfg, seeds=[3], **kw)
    assert a.token_ids == b.token_ids and a.step_maps == b.step_maps
    assert solo.token_ids[0] == a.token_ids[2] and solo.step_maps[0] == a.step_maps[2]
    c = generate(model, prompts, cfg, seeds=[9, 9, 9, 9], **kw)
    assert c.token_ids != a.token_ids
    assert all(0 not in s for s in a.step_maps)  # random-init tokens are always re-decided
