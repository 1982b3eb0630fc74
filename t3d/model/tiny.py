"""Build a tiny SDAR checkpoint directory (config + tokenizer + random safetensors weights).

The tokenizer is a byte-level BPE (`tokenizers`) wrapped in `PreTrainedTokenizerFast`, with the
SDAR/Qwen special tokens and a Qwen-style ChatML template, so every code path that serves a real
SDAR (Qwen2) tokenizer serves this one too. Digits are always single tokens: arithmetic then needs
several dependent tokens per number, which is what makes one-step block decoding hard.

    python utils/build_tiny_sdar.py --out models/sdar-tiny --seed 0
"""
import argparse
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from t3d.model.sdar import SDARConfig, SDARForCausalLM
from t3d.tasks.prompting import FUNCTION_INSTRUCTION, MATH_INSTRUCTION, OPTION_INSTRUCTION, STDIO_INSTRUCTION

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|MASK|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Merges are learned from the fixed chat scaffolding and instructions (so prompts stay short) plus a
# little arithmetic prose; task text outside it still encodes byte by byte.
CORPUS = [
    "user\n", "assistant\n", MATH_INSTRUCTION, OPTION_INSTRUCTION,
    STDIO_INSTRUCTION, FUNCTION_INSTRUCTION, "This is the problem:\n", "The answer is \\boxed{",
    "so the answer is", "What is the sum of", "What is the difference of", "What is the product of",
    "Compute", "then", "first", "add", "subtract", "multiply", "total", "result", "has", "apples", "more",
    "gives", "left", "each", "times", "plus", "minus", "equals", "Step", "We have", "Therefore",
]

TINY_CONFIG = dict(
    hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
    head_dim=48, max_position_embeddings=1024, rope_theta=10000.0, tie_word_embeddings=True,
)


def build_tokenizer(vocab_size=448):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\d"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", mask_token="<|MASK|>",
        additional_special_tokens=["<|im_start|>"], chat_template=CHAT_TEMPLATE, model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )


def build(out, seed=0, block_size=4, **overrides):
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    config = SDARConfig(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None, mask_token_id=tokenizer.mask_token_id, block_size=block_size,
        **{**TINY_CONFIG, **overrides},
    )
    model = SDARForCausalLM(config)
    out = Path(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return model, tokenizer


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="models/sdar-tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--block_size", type=int, default=4)
    args = parser.parse_args(argv)
    model, tokenizer = build(args.out, args.seed, args.block_size)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: {n / 1e6:.2f}M parameters, vocab {len(tokenizer)}")


if __name__ == "__main__":
    main()
