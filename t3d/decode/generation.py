"""`model.diffusion_generate(...)`: the toolkit's decoder behind the convention of diffusion LMs on the hub.

    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained("models/sdar-tiny", trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained("models/sdar-tiny")
    out = model.diffusion_generate(["Compute 47+38."], tokenizer=tokenizer, steps_per_block=1, return_step_maps=True)

The same decoder as rollout and evaluation (t3d.decode.decoder.generate) with their defaults for the ids the
model does not know by itself (stop tokens: the tokenizer's end-of-turn tokens, as the rollout stage uses), so
the tokens and step maps equal the rollout stage's for the same prompts and settings.
"""
from dataclasses import dataclass
from typing import Optional

import torch

from t3d.decode.decoder import DecodeConfig, generate, sequence_seeds


@dataclass
class DiffusionGenerateOutput:
    sequences: list  # per input: the generated ids (the stop token included)
    step_maps: Optional[list] = None  # per input: the 1-based denoising step of each generated id
    texts: Optional[list] = None  # per input: the decoded text, when a tokenizer was given
    nfe: Optional[list] = None  # per input: model forwards it took part in (prefill included)


def _prompt_ids(inputs, tokenizer, attention_mask):
    """Token id lists from strings (chat-templated user turns), id lists, or a [b, L] tensor (left padding
    removed with attention_mask)."""
    if isinstance(inputs, str):
        inputs = [inputs]
    if isinstance(inputs, torch.Tensor):
        rows = inputs.tolist() if inputs.dim() == 2 else [inputs.tolist()]
        if attention_mask is not None:
            keep = torch.as_tensor(attention_mask).bool().tolist()
            rows = [[t for t, k in zip(row, mask) if k] for row, mask in zip(rows, keep)]
        return rows
    if all(isinstance(x, str) for x in inputs):
        if tokenizer is None:
            raise ValueError("diffusion_generate: text prompts need tokenizer=")
        from t3d.tasks.prompting import encode_prompt

        return [encode_prompt(tokenizer, tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)) for text in inputs]
    return [list(map(int, ids)) for ids in inputs]


@torch.no_grad()
def diffusion_generate(model, inputs, *, tokenizer=None, attention_mask=None, block_size=None, steps_per_block=None,
                       max_new_tokens=256, temperature=0.0, top_k=0, top_p=1.0,
                       remasking_strategy="low_confidence_static", dynamic_threshold=0.9, seed=0, stop_ids=None,
                       return_step_maps=False):
    """Decode a batch block by block. block_size defaults to the model's (config.block_size), steps_per_block to
    block_size (one token per step). Sequence i is seeded as the rollout stage seeds item i, so batching and
    order do not change a sequence's output."""
    config = model.config
    block_size = int(block_size or getattr(config, "block_size", None) or 4)
    settings = DecodeConfig(block_size=block_size, steps_per_block=int(steps_per_block or block_size),
                            max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_k=int(top_k),
                            top_p=float(top_p), strategy=remasking_strategy, dynamic_threshold=float(dynamic_threshold))
    prompts = _prompt_ids(inputs, tokenizer, attention_mask)
    if stop_ids is None:
        if tokenizer is not None:
            from t3d.model.checkpoint import stop_token_ids

            stop_ids = stop_token_ids(tokenizer)
        else:
            eos = config.eos_token_id
            stop_ids = [eos] if isinstance(eos, int) else list(eos or [])
    mask_id = getattr(config, "mask_token_id", None)
    if mask_id is None:
        raise ValueError("diffusion_generate: the model's config has no mask_token_id")
    was_training = model.training
    model.eval()
    out = generate(model, prompts, settings, mask_id=mask_id, pad_id=config.pad_token_id, stop_ids=stop_ids,
                   seeds=sequence_seeds(int(seed), range(len(prompts))))
    model.train(was_training)
    texts = None
    if tokenizer is not None:
        texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in out.token_ids]
    return DiffusionGenerateOutput(sequences=out.token_ids, step_maps=out.step_maps if return_step_maps else None,
                                   texts=texts, nfe=out.nfe)
