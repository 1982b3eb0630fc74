"""Training examples: validated token ids from rollout records or SFT items, batched with per-batch padding.

Rollout records that carry the rollout's `block_size` / `denoising_steps_per_block` (data/rename_key.py
copies them) are checked against training.block_size, and their step_map against the steps the decoder
can take: 1 <= step <= S x (blocks the response spans), blocks aligned to absolute positions.

An example is a dict: `index` (record index in the file: errors and the noise RNG are keyed by it),
`prompt_ids`, `response_ids` (+ `post_num` pad tokens after a final stop token, trained to predict
pad), `step_map` (same length; the appended pads count as decoded after every real token) and
`real_len` (response tokens before those pads).
"""
from collections import Counter

import torch
from torch.utils.data import Dataset, Sampler

from t3d.model.checkpoint import stop_token_ids
from t3d.tasks.loading import find_file, find_saved, hub_snapshot, is_hub, load_records, section_options
from t3d.common.io import DataError
from t3d.common.paths import DATA
from t3d.train.records import max_step
from t3d.model.masks import pad_sequences
from t3d.tasks.prompting import build_prompt, encode_prompt


class RecordError(DataError):
    """A record that fails validation; `reason` groups skipped records in the summary."""

    def __init__(self, message, reason):
        super().__init__(message)
        self.reason = reason


def resolve_data_path(name, dataset_cfg=None):
    """`dataset.optimization_data`: a .json/.jsonl/.parquet/.csv file path, a name under the repo's data/, or
    hub:<owner>/<name> (dataset.split / dataset.subset of `dataset_cfg`), read into a content-named JSONL
    snapshot in the datasets cache: the run's data is then one fixed file, which resume fingerprints."""
    if is_hub(name) or find_saved(name) is not None:
        options = section_options(dataset_cfg or {}, "dataset.")
        source, path = hub_snapshot(name, split=options["split"], subset=options["subset"])
        print(f"{source}: training on its rows, saved as {path}")
        return path
    path = find_file(name)
    if path is None:
        raise DataError(f"training data not found: {DATA / f'{name}.json'} "
                        f"(dataset.optimization_data='{name}')")
    return path


def _int_list(record, key, where):
    value = record.get(key)
    if value is None:
        raise RecordError(f"{where}: missing '{key}'", f"missing {key}")
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise RecordError(f"{where}: '{key}' must be a list of integers", f"bad {key}")
    return value


def _positive_int(record, key, where):
    value = record.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise RecordError(f"{where}: '{key}' must be a positive integer, got {value!r}", f"bad {key}")
    return value


def check_step_map(step_map, prompt_len, block_size, steps_per_block, where):
    """RecordError unless every step is one the decoder can produce: >= 1, and at most S per block over the
    absolute-position blocks the response spans (global numbering)."""
    low, high = min(step_map), max(step_map)
    if low < 1:
        raise RecordError(f"{where}: step_map has the value {low}; decoding steps start at 1", "impossible step_map")
    most, blocks = max_step(len(step_map), block_size, steps_per_block, prompt_len)
    if high > most:
        raise RecordError(
            f"{where}: step_map has the value {high} but the response spans {blocks} blocks of "
            f"{steps_per_block} denoising steps (at most {most})", "impossible step_map")


def _finish(index, prompt_ids, response_ids, step_map, limits, stops, pad_id, where):
    """Length checks, truncation, post pads -> example dict."""
    max_prompt_len, max_gen_length, post_num = limits
    if len(prompt_ids) > max_prompt_len:
        raise RecordError(
            f"{where}: prompt has {len(prompt_ids)} tokens > training.max_prompt_len={max_prompt_len}",
            "prompt too long",
        )
    n_steps = len(step_map)
    response_ids, step_map = response_ids[:max_gen_length], step_map[:max_gen_length]
    real_len = len(response_ids)
    n_pad = min(post_num, max_gen_length - real_len) if response_ids[-1] in stops else 0
    last = max(step_map) + 1
    return {
        "index": index, "prompt_ids": prompt_ids, "real_len": real_len, "truncated": len(step_map) < n_steps,
        "response_ids": response_ids + [pad_id] * n_pad, "step_map": step_map + [last] * n_pad,
    }


def rollout_example(record, index, tokenizer, limits, stops, where, prompt_cache, block_size):
    """One rollout record (data/rename_key.py format) -> example; RecordError when invalid, DataError when
    the record's rollout block size is not training.block_size."""
    prompt = record.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise RecordError(f"{where}: missing 'prompt' (the chat-templated rollout prompt)", "missing prompt")
    response_ids = _int_list(record, "response_ids", where)
    answer = record.get("answer")
    if not response_ids or (isinstance(answer, str) and not answer.strip()):
        raise RecordError(f"{where}: empty answer", "empty answer")
    step_map = _int_list(record, "step_map", where)
    if len(step_map) != len(response_ids):
        raise RecordError(
            f"{where}: step_map has {len(step_map)} entries but response_ids has {len(response_ids)}",
            "step_map length mismatch",
        )
    vocab = len(tokenizer)
    outside = next((i for i in response_ids if not 0 <= i < vocab), None)
    if outside is not None:
        raise RecordError(f"{where}: response_ids holds {outside}, outside the tokenizer's vocabulary (0..{vocab - 1})",
                          "token id outside the vocabulary")
    rollout_block = _positive_int(record, "block_size", where)
    if rollout_block is not None and rollout_block != block_size:
        raise DataError(f"{where}: the rollout's block_size is {rollout_block} but training.block_size={block_size}; "
                        "blocks, trace masks and the path loss must follow the decoder's blocks")
    if prompt not in prompt_cache:  # replicas share their prompt
        prompt_cache[prompt] = encode_prompt(tokenizer, prompt)
    prompt_ids = prompt_cache[prompt]
    # without the rollout's S, S = B bounds it (a block never takes more steps than it has tokens)
    steps_per_block = _positive_int(record, "denoising_steps_per_block", where) or block_size
    check_step_map(step_map, len(prompt_ids), block_size, steps_per_block, where)
    return _finish(index, prompt_ids, response_ids, step_map, limits, stops, tokenizer.pad_token_id, where)


def sft_example(item, index, tokenizer, limits, stops, where, data_type, target_fields):
    """One dataset item (question + solution/answer) -> example with response = encode(target) + [eos]."""
    if not isinstance(item.get("question"), str) or not item["question"].strip():
        raise RecordError(f"{where}: missing 'question'", "missing question")
    target = next((item[f] for f in target_fields if item.get(f) is not None), None)
    if isinstance(target, list):
        target = target[0] if target else None
    if not isinstance(target, str) or not target.strip():
        raise RecordError(f"{where}: empty answer (no non-empty {' or '.join(target_fields)})", "empty answer")
    prompt_ids = encode_prompt(tokenizer, build_prompt(tokenizer, item, data_type))
    response_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    steps = list(range(1, len(response_ids) + 1))  # unused by SFT; left-to-right placeholder
    return _finish(index, prompt_ids, response_ids, steps, limits, stops, tokenizer.pad_token_id, where)


def load_examples(path, tokenizer, *, max_prompt_len, max_gen_length, post_num, skip_invalid, kind="rollout",
                  data_type="math", target_fields=("solution", "answer"), block_size=4, log=print, dataset_cfg=None):
    """Read and validate every record of `path` (any t3d.tasks.loading format), mapped by dataset.columns /
    dataset.answer_format of `dataset_cfg` (the `dataset:` section, or a dict). Invalid records raise a
    one-line DataError naming the record, or with skip_invalid are counted, skipped and summarised."""
    options = section_options(dataset_cfg or {}, "dataset.")
    path, records = load_records(path, columns=options["columns"], answer_format=options["answer_format"],
                                 key_prefix="dataset.")
    limits, stops, cache = (max_prompt_len, max_gen_length, post_num), set(stop_token_ids(tokenizer)), {}
    examples, skipped, truncated = [], Counter(), 0
    for i, record in enumerate(records):
        where = f"{path}: record {i}"
        try:
            if kind == "rollout":
                ex = rollout_example(record, i, tokenizer, limits, stops, where, cache, block_size)
            else:
                ex = sft_example(record, i, tokenizer, limits, stops, where, data_type, target_fields)
        except RecordError as err:
            if not skip_invalid:
                raise DataError(f"{err} (set training.skip_invalid_records=true to skip such records)") from None
            skipped[err.reason] += 1
            continue
        truncated += ex.pop("truncated")
        examples.append(ex)
    summary = f"{path.name}: kept {len(examples)} of {len(records)} records"
    if skipped:
        summary += "; skipped " + ", ".join(f"{n} ({reason})" for reason, n in sorted(skipped.items()))
    if truncated:
        summary += f"; truncated {truncated} responses to training.max_gen_length={max_gen_length}"
    log(summary)
    unchecked = sum("block_size" not in r for r in records) if kind == "rollout" else 0
    if unchecked:
        log(f"WARNING: {unchecked} of {len(records)} records in {path.name} do not say their rollout block_size "
            f"(older or original-project rollouts): training.block_size={block_size} could not be checked against "
            "the decoder that produced them")
    if not examples:
        raise DataError(f"{path}: no usable records ({summary})")
    return examples


class ExampleDataset(Dataset):
    def __init__(self, examples):
        self.examples = examples

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        return self.examples[i]


class EpochShuffle(Sampler):
    """A fresh permutation per epoch, a pure function of (seed, epoch): resume replays the same order."""

    def __init__(self, n, seed):
        self.n, self.seed, self.epoch = n, int(seed), 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


class Collate:
    """Examples -> a batch padded to its own longest prompt (left) and response (right)."""

    def __init__(self, pad_id):
        self.pad_id = pad_id

    def __call__(self, examples):
        prompt_ids, prompt_len = pad_sequences([e["prompt_ids"] for e in examples], self.pad_id, left=True)
        response_ids, response_len = pad_sequences([e["response_ids"] for e in examples], self.pad_id)
        step_map, _ = pad_sequences([e["step_map"] for e in examples], 0)
        return {
            "index": torch.tensor([e["index"] for e in examples]),
            "prompt_ids": prompt_ids, "prompt_len": prompt_len,
            "response_ids": response_ids, "response_len": response_len,
            "real_len": torch.tensor([e["real_len"] for e in examples]),
            "step_map": step_map,
        }
