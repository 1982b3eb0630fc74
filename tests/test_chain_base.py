"""models/sdar-chain, the chain task's shipped base: loadable through the Auto classes, block size 8, and
the few-step headroom the chain experiment needs (S=B well above S=1, S=1 many tokens per forward)."""
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import models  # noqa: F401  (registers SDAR with the Auto classes)
from t3d.decode import rollout as ro
from t3d.model.checkpoint import load_tokenizer, stop_token_ids
from t3d.decode.decoder import DecodeConfig
from t3d.decode.settings import RolloutSettings
from t3d.eval.grading import grade_items

ROOT = Path(__file__).resolve().parents[1]
CHAIN = ROOT / "models" / "sdar-chain"


@pytest.fixture(scope="module")
def chain_base():
    model = AutoModelForCausalLM.from_pretrained(CHAIN).eval()
    return model, load_tokenizer(str(CHAIN))


def test_loads_through_auto_classes_with_block_size_8_and_the_default_tokenizer(chain_base):
    model, tok = chain_base
    assert type(model).__name__ == "SDARForCausalLM" and model.config.block_size == 8
    # the same tokenizer as the tiny default: the chain data's token counts hold for both
    assert tok.get_vocab() == load_tokenizer(str(ROOT / "models" / "sdar-tiny")).get_vocab()


def test_full_step_beats_one_step_by_a_wide_margin_on_validation(chain_base):
    """Greedy on the first 40 val problems, through eval.py's decode and grading path (the full 400: S=8 54.5%,
    S=1 6.0%, in the recipe's header)."""
    model, tok = chain_base
    items = json.loads((ROOT / "data" / "synthetic_chain_val.json").read_text())[:40]
    accuracy, tokens_per_forward = {}, {}
    for steps in (8, 1):
        cfg = DecodeConfig(block_size=8, steps_per_block=steps, max_new_tokens=80)
        with torch.no_grad():
            results, stats = ro.rollout(model, tok, items, RolloutSettings(decode=cfg), data_type="math",
                                        stop_ids=stop_token_ids(tok), progress=False)
        accuracy[steps] = sum(c[0] for c in grade_items(results, "math")) / len(items)
        tokens_per_forward[steps] = ro.summarize(results, stats)["tokens_per_forward"]
    assert accuracy[8] >= 0.35 and accuracy[8] - accuracy[1] >= 0.25, accuracy
    assert tokens_per_forward[1] >= 6.0 > 1.0 > tokens_per_forward[8], tokens_per_forward
