"""diffusion_generate returns the rollout stage's tokens and step maps for the same prompts and settings."""
import json

import pytest

from t3d.common.paths import CHECKOUT
from t3d.decode.generation import diffusion_generate
from t3d.model.checkpoint import load
from t3d.tasks.prompting import encode_prompt

EXAMPLE = CHECKOUT / "data" / "rollout_example_sdar-tiny.json"  # rollout stage, greedy, B=4, S=4, max_token=64


@pytest.fixture(scope="module")
def tiny_default():
    model, tokenizer, _ = load(str(CHECKOUT / "models" / "sdar-tiny"))
    return model, tokenizer


def test_greedy_equals_the_shipped_rollout(tiny_default):
    model, tokenizer = tiny_default
    items = json.loads(EXAMPLE.read_text())
    prompts = [encode_prompt(tokenizer, item["prompt"]) for item in items]
    out = diffusion_generate(model, prompts, tokenizer=tokenizer, block_size=4, steps_per_block=4, max_new_tokens=64,
                             return_step_maps=True)
    assert out.sequences == [item["response_ids"][0] for item in items]
    assert out.step_maps == [item["step_map"][0] for item in items]


def test_sampling_equals_the_rollout_stage_with_the_same_seed(tiny_default, tmp_path):
    from t3d.commands import sample

    sample([f"experiment.output_dir={tmp_path}", "evaluation.eval_dataset=synthetic_math_smoke", "evaluation.max_items=4",
            "rollout.temperature=0.8", "rollout.seed=3", "rollout.block_size=4", "rollout.denoising_steps_per_block=2",
            "rollout.max_token=32"])
    (rollout,) = (tmp_path / "sdar_sample" / "temp_data").glob("outputs-*.json")
    items = json.loads(rollout.read_text())
    model, tokenizer = tiny_default
    out = diffusion_generate(model, [encode_prompt(tokenizer, i["prompt"]) for i in items], tokenizer=tokenizer,
                             block_size=4, steps_per_block=2, max_new_tokens=32, temperature=0.8, seed=3,
                             return_step_maps=True)
    assert out.sequences == [i["response_ids"][0] for i in items]
    assert out.step_maps == [i["step_map"][0] for i in items]


def test_text_prompts_are_chat_templated_user_turns(tiny_default):
    model, tokenizer = tiny_default
    out = diffusion_generate(model, "Compute 47+38.", tokenizer=tokenizer, max_new_tokens=24)
    templated = tokenizer.apply_chat_template([{"role": "user", "content": "Compute 47+38."}],
                                              add_generation_prompt=True, tokenize=False)
    again = diffusion_generate(model, [encode_prompt(tokenizer, templated)], tokenizer=tokenizer, max_new_tokens=24)
    assert out.sequences == again.sequences and out.texts == again.texts and out.step_maps is None


def test_the_model_method_equals_the_function_and_generate_points_to_it(tiny_default):
    model, tokenizer = tiny_default
    prompts = [encode_prompt(tokenizer, json.loads(EXAMPLE.read_text())[0]["prompt"])]
    assert model.diffusion_generate(prompts, tokenizer=tokenizer, max_new_tokens=64).sequences == \
        diffusion_generate(model, prompts, tokenizer=tokenizer, max_new_tokens=64).sequences
    with pytest.raises(NotImplementedError, match=r"use model.diffusion_generate\(\.\.\.\)$"):
        model.generate(prompts)


def test_a_checkpoint_loaded_through_remote_code_decodes_with_the_toolkit():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = CHECKOUT / "models" / "sdar-tiny"
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules")  # the checkpoint's own code, not t3d's
    tokenizer = AutoTokenizer.from_pretrained(path)
    out = model.diffusion_generate(["Compute 47+38."], tokenizer=tokenizer, steps_per_block=4, max_new_tokens=24)
    toolkit, _, _ = load(str(path))
    again = diffusion_generate(toolkit, ["Compute 47+38."], tokenizer=tokenizer, steps_per_block=4, max_new_tokens=24)
    assert out.sequences == again.sequences
