"""Decode a dataset with the block-diffusion decoder: prompts, replicas, batching, processes, resume.

Shared by `sample/sdar_sample.py` (rollouts with trajectories) and `eval.py` (few-step evaluation).
Under `accelerate launch` every process decodes a strided share of the prompts and the main process
gathers the results in input order; as a plain script it is the same code with one process.
A crash loses at most one batch: finished sequences are appended to per-process `.partial` files
and skipped on rerun. Each partial file starts with a fingerprint of every input that determines its
sequences (weights and tokenizer content, the items decoded, each decoding setting, replicas, seed);
a rerun whose inputs differ is refused with one line naming what changed, unless
`evaluation.restart=true` discards the partial files and starts fresh.

The rollout file keeps the original's name; its fingerprint is kept beside it (`<name>.inputs`), so a rerun
with the same inputs is a no-op, one with other inputs is refused, and `evaluation.restart=true` moves the
finished file aside (`<name>.previous-<UTC time>`) instead of replacing it. The main process holds
`<name>.lock` while the job runs: a second run on the same output is refused at once.
"""
import hashlib
import json
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from t3d.common.config import ConfigError
from t3d.common.io import DataError, OutputLock, OutputLocked, append_text, atomic_write_text, move_aside, utc_stamp
from t3d.decode.decoder import generate, sequence_seeds
from t3d.decode.settings import RolloutJob, RolloutSettings, check_max_items, snapshot_yaml
from t3d.model.checkpoint import DTYPES
from t3d.tasks.answers import extract_answer
from t3d.tasks.loading import load_records
from t3d.tasks.prompting import DATA_TYPES, build_prompt, encode_prompt


def load_items(name_or_path, max_items=None, **options):
    """(source, items); `max_items` keeps the first N (a quick look at a big set). `options`: split, subset,
    columns, answer_format, key_prefix of t3d.tasks.loading.load_records (a hub dataset's source is a label)."""
    max_items = check_max_items(max_items)
    source, items = load_records(name_or_path, **options)
    if max_items is not None and max_items > len(items):
        print(f"note: evaluation.max_items={max_items} but {source} has {len(items)} items: using all {len(items)}",
              file=sys.stderr)
    return source, items[:max_items] if max_items else items


def item_error(item, data_type):
    """Why an item cannot be decoded, or None."""
    if data_type not in DATA_TYPES:
        raise DataError(f"unknown data_type '{data_type}': expected one of {', '.join(DATA_TYPES)}")
    question = item.get("question")
    if question is not None and not isinstance(question, str):
        return f"'question' is a {type(question).__name__}, expected a string"
    if not isinstance(question, str) or not question.strip():
        return "missing or empty 'question'"
    if data_type == "code" and item.get("test_method", "function") not in ("function", "stdio"):
        return f"unknown test_method '{item.get('test_method')}'"
    return None


# ------------------------------------------------------------------------------------------- fingerprints
# DecodeConfig field -> the config key a user sets (named in resume refusals)
_SETTING_KEYS = {"block_size": "rollout.block_size", "steps_per_block": "rollout.denoising_steps_per_block",
                 "max_new_tokens": "rollout.max_token", "temperature": "rollout.temperature", "top_k": "rollout.top_k",
                 "top_p": "rollout.top_p", "strategy": "rollout.remasking_strategy",
                 "dynamic_threshold": "rollout.dynamic_threshold", "random_init_ratio": "rollout.random_init_ratio",
                 "stop_at_eos": "stop_at_eos"}
RESTART_HINT = "pass evaluation.restart=true to discard them and start fresh"


def digest(obj, length=16):
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()[:length]


def data_digest(items, index_offset=0):
    """Content identity of the items decoded (and where they start in the whole dataset)."""
    return digest({"offset": index_offset, "items": items})


def decode_dtype(settings: RolloutSettings, device):
    """The torch dtype name the model is loaded in: `auto` = bf16 on CUDA, fp32 elsewhere."""
    dtype = settings.dtype if settings.dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    return str(DTYPES[dtype]).removeprefix("torch.")


def input_fingerprint(content, tokenizer, items, settings: RolloutSettings, *, data_type, stop_ids, device,
                      index_offset=0):
    """{component: value} of everything that determines the decoded sequences, in the order a change is reported.
    `content`: t3d.model.checkpoint.content_fingerprint of the checkpoint; `device`: the torch device decoded on.
    Computed before the model is loaded, so a finished job is recognised without loading it."""
    inputs = dict(content)  # weights (+ model config), tokenizer files
    inputs["data"] = data_digest(items, index_offset)
    inputs.update({_SETTING_KEYS[k]: v for k, v in asdict(settings.decode).items()})
    inputs.update({
        "rollout.num_response_per_task": settings.num_responses, "rollout.seed": settings.seed,
        "evaluation.data_type": data_type, "rollout.start_with_think": bool(settings.start_with_think),
        "rollout.stop_token_list": sorted(int(i) for i in stop_ids),
        "rollout.dtype": decode_dtype(settings, device), "device": device.type,
        "mask/pad ids": [tokenizer.mask_token_id, tokenizer.pad_token_id],
    })
    return inputs


def describe_change(old, new, weights, data):
    """What differs between two fingerprints, one clause per component; `weights`/`data` say it for those two."""
    changed = [key for key in new if old.get(key) != new[key]] + [key for key in old if key not in new]
    what = []
    for key in changed:
        if key == "weights":
            what.append(f"other weights ({weights})")
        elif key == "tokenizer":
            what.append(f"another tokenizer ({weights.replace('model', 'tokenizer')})")
        elif key == "data":
            what.append(f"other data ({data})")
        else:
            what.append(f"{key}={old.get(key)!r} (now {new.get(key)!r})")
    return ", ".join(what)


# ------------------------------------------------------------------------------------------------ partials
@dataclass(frozen=True)
class Partials:
    """Where finished sequences are kept (`<prefix>.partial.rank<i>.jsonl`) and the fingerprint they must match."""

    prefix: Path
    inputs: dict
    restart: bool = False
    checkpoint_path: str | None = None  # named in refusals
    data_source: str | None = None


def _read_partial(paths, partials):
    """Finished sequences of earlier runs; ConfigError if a file was decoded from other inputs."""
    done = {}
    for path in paths:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash
        if not records:
            continue
        header = records[0].get("t3d_partial_inputs") if isinstance(records[0], dict) else None
        if header is None:
            raise ConfigError(f"{path}: partial results without an input fingerprint (an older version); {RESTART_HINT}")
        if header != partials.inputs:
            change = describe_change(header, partials.inputs, f"the model files in {partials.checkpoint_path} changed",
                                     f"the items decoded from {partials.data_source or 'the dataset'} changed")
            raise ConfigError(f"{path}: partial results of an interrupted run were decoded with {change}; {RESTART_HINT}")
        for rec in records[1:]:
            if isinstance(rec, dict) and {"item", "replica", "ids", "steps", "nfe", "prefill", "finished"} <= rec.keys():
                done[(rec["item"], rec["replica"])] = rec
    return done


def _open_partials(partials, state):
    """Finished sequences to reuse and this process's partial file (its fingerprint header written)."""
    prefix = Path(partials.prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    pattern = prefix.name + ".partial.rank*.jsonl"
    mine = prefix.parent / f"{prefix.name}.partial.rank{state.process_index}.jsonl"
    if partials.restart:
        if state.is_main_process:
            for old in prefix.parent.glob(pattern):
                old.unlink()
        state.wait_for_everyone()  # nobody writes before the old files are gone
        done = {}
    else:
        done = _read_partial(sorted(prefix.parent.glob(pattern)), partials)
        state.wait_for_everyone()  # every process has read the others' files before any appends
    if partials.restart or not _has_header(mine):  # new or empty (the header is written atomically)
        atomic_write_text(mine, json.dumps({"t3d_partial_inputs": partials.inputs}) + "\n")
    return done, mine


def _has_header(path):
    if not path.is_file():
        return False
    first = path.read_text(encoding="utf-8").split("\n", 1)[0]
    try:
        return "t3d_partial_inputs" in json.loads(first)
    except json.JSONDecodeError:
        return False


def remove_partials(prefix):
    prefix = Path(prefix)
    for partial in prefix.parent.glob(prefix.name + ".partial.rank*.jsonl"):
        partial.unlink()


# ------------------------------------------------------------------------------------------------- decoding
def prepare_prompts(items, tokenizer, settings: RolloutSettings, data_type, max_pos=None):
    """({item index: (prompt text, ids)}, {item index: error}) for the items; an item that cannot be decoded (bad
    fields, prompt + max_token beyond the model's context) gets an error and the others go on. A max_token that
    leaves no room for any prompt, or items none of which can be decoded, is a one-line error: such a run would
    end with zero sequences and an accuracy of 0."""
    max_new = settings.decode.max_new_tokens
    if max_pos and max_new >= max_pos:
        raise ConfigError(f"rollout.max_token={max_new} leaves no room for a prompt in the model's context "
                          f"(max_position_embeddings={max_pos})")
    prompts, errors = {}, {}
    for i, item in enumerate(items):
        err = item_error(item, data_type)
        if err is None:
            text = build_prompt(tokenizer, item, data_type, settings.start_with_think)
            ids = encode_prompt(tokenizer, text)
            if max_pos and len(ids) + max_new > max_pos:
                err = f"prompt of {len(ids)} tokens + max_token {max_new} exceeds the model's context {max_pos}"
            else:
                prompts[i] = (text, ids)
        if err is not None:
            errors[i] = f"item {i}: {err}"
    if errors and not prompts:
        raise DataError(f"none of the {len(items)} items can be decoded; {next(iter(errors.values()))}")
    return prompts, errors


def rollout(model, tokenizer, items, settings: RolloutSettings, *, data_type, stop_ids=(), state=None,
            partials: Partials | None = None, index_offset=0, progress=True, prepared=None):
    """Decode `settings.num_responses` replicas of every item. Returns (results, stats) on the main process.

    results: the input items, each extended with prompt, full_output, response_ids, step_map,
    extracted_output, response_length, nfe, finished (lists over replicas); an item that cannot be
    decoded keeps its fields plus `error`, and the others are unaffected. Other processes get (None, stats).
    `index_offset` is the position of items[0] in the whole dataset (node sharding): sequence seeds
    derive from global indices, so shards merged equal one run. With `partials`, finished sequences go to
    `<prefix>.partial.rank<i>.jsonl` and a rerun reuses them only if every input is unchanged. `prepared`:
    prepare_prompts' answer for these items and settings when the caller has it already (not encoded twice).
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    state = state or PartialState()
    decode_cfg, num_responses = settings.decode, settings.num_responses
    prompts, errors = prepared or prepare_prompts(items, tokenizer, settings, data_type,
                                                  getattr(model.config, "max_position_embeddings", None))
    done, partial_file = {}, None
    if partials is not None:
        done, partial_file = _open_partials(partials, state)

    jobs = [(i, r) for i in prompts for r in range(num_responses) if (i, r) not in done]
    jobs.sort(key=lambda job: len(prompts[job[0]][1]))  # similar lengths share a batch: less padding
    mine = jobs[state.process_index::state.num_processes]
    step = min(settings.chunk_size, max(len(mine), 1))
    results = []
    started = time.perf_counter()
    forwards = 0
    bar = tqdm(total=len(mine), desc="decoding", unit="seq", disable=not (progress and state.is_local_main_process))
    for start in range(0, len(mine), step):
        chunk = mine[start:start + step]
        out = generate(
            model, [prompts[i][1] for i, _ in chunk], decode_cfg,
            mask_id=tokenizer.mask_token_id, pad_id=tokenizer.pad_token_id, stop_ids=stop_ids,
            seeds=sequence_seeds(settings.seed, [(index_offset + i) * num_responses + r for i, r in chunk]),
            vocab_for_random=len(tokenizer),
        )
        forwards += out.batch_forwards
        new = [
            {"item": i, "replica": r, "ids": ids, "steps": sm, "nfe": nfe, "prefill": pre, "finished": fin}
            for (i, r), ids, sm, nfe, pre, fin in zip(chunk, out.token_ids, out.step_maps, out.nfe, out.prefill_nfe,
                                                      out.finished)
        ]
        results.extend(new)
        if partial_file is not None:
            append_text(partial_file, "".join(json.dumps(rec) + "\n" for rec in new))
        bar.update(len(chunk))
        tokens = sum(len(rec["ids"]) for rec in results)
        bar.set_postfix(tok_per_fwd=f"{tokens / max(sum(rec['nfe'] for rec in results), 1):.2f}")
    bar.close()
    elapsed = time.perf_counter() - started

    gathered = gather_object([results]) if state.num_processes > 1 else [results]
    # the cost of this run only: sequences resumed from an earlier run took none of these seconds
    stats = {"seconds": elapsed, "batch_forwards": forwards, "processes": state.num_processes,
             "inputs": partials.inputs if partials else None, "resumed_sequences": len(done),
             "decoded_tokens": sum(len(rec["ids"]) for part in gathered for rec in part)}
    if not state.is_main_process:
        return None, stats
    for part in gathered:
        for rec in part:
            done[(rec["item"], rec["replica"])] = rec
    return assemble(items, prompts, errors, done, num_responses, tokenizer, data_type, decode_cfg), stats


def assemble(items, prompts, errors, done, num_responses, tokenizer, data_type, decode_cfg):
    """Results in input order: one output item per input item, replicas as lists, plus the block size,
    steps and strategy they were decoded with (training checks them against its own block size)."""
    out = []
    for i, item in enumerate(items):
        if i in errors:
            out.append({**item, "error": errors[i]})
            continue
        recs = [done[(i, r)] for r in range(num_responses)]
        texts = [tokenizer.decode(rec["ids"], skip_special_tokens=False) for rec in recs]
        out.append({
            **item,
            "prompt": prompts[i][0],
            "full_output": texts,
            "step_map": [rec["steps"] for rec in recs],
            "response_ids": [rec["ids"] for rec in recs],
            "extracted_output": [extract_answer(t, item, data_type) for t in texts],
            "response_length": [len(rec["ids"]) for rec in recs],
            "nfe": [rec["nfe"] for rec in recs],
            "prefill_nfe": [rec["prefill"] for rec in recs],
            "finished": [rec["finished"] for rec in recs],
            "block_size": decode_cfg.block_size,
            "denoising_steps_per_block": decode_cfg.steps_per_block,
            "remasking_strategy": decode_cfg.strategy,
        })
    return out


def summarize(results, stats):
    """Decoding-cost metrics over all decoded sequences."""
    lengths = [n for item in results if "error" not in item for n in item["response_length"]]
    nfes = [n for item in results if "error" not in item for n in item["nfe"]]
    prefills = sum(n for item in results if "error" not in item for n in item["prefill_nfe"])
    tokens = sum(lengths)
    return {
        "sequences": len(lengths),
        "failed_items": sum("error" in item for item in results),
        "mean_response_length": tokens / max(len(lengths), 1),
        "mean_nfe": sum(nfes) / max(len(nfes), 1),
        "tokens_per_forward": tokens / max(sum(nfes), 1),
        # the prompt's one prefill forward left out: the decoder's own parallelism, whatever the prompt length
        "tokens_per_forward_no_prefill": tokens / max(sum(nfes) - prefills, 1),
        "batch_forwards": stats["batch_forwards"],  # of the main process
        "processes": stats["processes"],
        "seconds": stats["seconds"],
        "resumed_sequences": stats.get("resumed_sequences", 0),
        "tokens_per_second": stats.get("decoded_tokens", tokens) / max(stats["seconds"], 1e-9),
    }


def shard(items, num_node, node_index):
    """Contiguous shard `node_index` of `num_node` (as the original): (offset, items)."""
    if not 0 <= node_index < num_node:
        raise DataError(f"evaluation.node_index {node_index} must be in [0, num_node={num_node})")
    lo, hi = len(items) * node_index // num_node, len(items) * (node_index + 1) // num_node
    return lo, items[lo:hi]


# ------------------------------------------------------------------------------------------ loading, locks
def make_state():
    """The accelerate process state (cpu=True without CUDA: else a CPU `accelerate launch` rank can come up alone
    instead of joining gloo)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def stop_ids_for(tokenizer, settings: RolloutSettings):
    """The tokenizer's stop ids plus rollout.stop_token_list (each must be one token)."""
    from t3d.model.checkpoint import stop_token_ids

    stop_ids = stop_token_ids(tokenizer)
    for text in settings.stop_strings:
        ids = tokenizer(str(text), add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ConfigError(f"rollout.stop_token_list entry {text!r} is {len(ids)} tokens; stop strings must be one token")
        stop_ids.append(ids[0])
    return stop_ids


def setup(checkpoint_path, settings: RolloutSettings, state):
    """Model (in the settings' dtype, on the state's device), tokenizer and stop ids of a resolved checkpoint."""
    import warnings

    import torch

    from t3d.model.checkpoint import load

    dtype = settings.dtype if settings.dtype != "auto" else ("bf16" if state.device.type == "cuda" else "fp32")
    model, tokenizer, _ = load(checkpoint_path, dtype=dtype, device=state.device,
                               attn_implementation=settings.attn_implementation)
    if state.is_main_process:
        print(f"model: {dtype}, attention {model.config._attn_implementation}", flush=True)
    stop_ids = stop_ids_for(tokenizer, settings)
    trained_b = getattr(model.config, "block_size", None)
    if trained_b is not None and int(trained_b) != settings.decode.block_size:
        warnings.warn(f"rollout.block_size={settings.decode.block_size} differs from the block size the model was "
                      f"trained with ({trained_b}, config.json 'block_size'); quality will suffer", stacklevel=2)
    torch.manual_seed(settings.seed)
    return model, tokenizer, stop_ids


@contextmanager
def main_process_locks(paths, state):
    """Lock every output path for the job's lifetime (t3d.common.io.OutputLock). Only the main process takes the
    locks; under `accelerate launch` a refusal is sent to every process, so all of them stop with the same line."""
    held, refusal = [], None
    if state.is_main_process:
        try:
            for path in sorted(set(map(Path, paths))):
                held.append(OutputLock(path).acquire())
        except OutputLocked as err:
            refusal = str(err)
            for lock in held:
                lock.release()
            held = []
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        refusal = broadcast_object_list([refusal])[0]
    if refusal:
        raise OutputLocked(refusal)
    try:
        yield
    finally:
        for lock in held:
            lock.release()


# ------------------------------------------------------------------------------------------------- the job
def inputs_file(out_path):
    """Where a finished rollout's fingerprint is kept (not *.json: `outputs-*.json` globs find rollouts only)."""
    return out_path.with_name(out_path.name + ".inputs")


def config_file(out_path):
    return out_path.with_name(out_path.stem + ".config.yaml")


def finished_rollout(out_path, record, job, state, checkpoint_path, data_source):
    """True if `out_path` is finished with exactly these inputs (the rerun is a no-op). A finished file of other
    inputs is refused in one line; with evaluation.restart=true it is moved aside (with its fingerprint and
    config) and False is returned."""
    if not out_path.is_file():
        return False
    if job.restart:
        if state.is_main_process:
            stamp = utc_stamp()
            for path in (out_path, inputs_file(out_path), config_file(out_path)):
                if path.exists():
                    moved = move_aside(path, stamp)
                    if path == out_path:
                        print(f"note: evaluation.restart=true: moved the finished {out_path.name} to {moved}",
                              file=sys.stderr)
        state.wait_for_everyone()
        return False
    try:
        old = json.loads(inputs_file(out_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = None
    if old == record:
        return True
    hint = "pass evaluation.restart=true to move it aside and decode again"
    if not isinstance(old, dict):
        raise ConfigError(f"{out_path} holds a finished rollout without recorded inputs (an older version, or "
                          f"written by hand); {hint}")
    change = describe_change(old, record, f"than those in {checkpoint_path}", f"than the items of {data_source}")
    raise ConfigError(f"{out_path} holds a finished rollout decoded with {change}; {hint}")


def run_rollout_job(cfg):
    """sdar_sample.py: decode the (sharded) dataset and write the rollout file. Returns its path."""
    return run_rollout(RolloutJob.from_config(cfg))


def run_rollout(job: RolloutJob):
    """Decode the job's shard and write the rollout file (None off the main process); a no-op if it is finished."""
    from t3d.common.io import atomic_write_json, check_output_dir
    from t3d.model.checkpoint import check_checkpoint, content_fingerprint, load_tokenizer, resolve_checkpoint

    out_path = job.output_path
    check_output_dir(out_path.parent, "experiment.output_dir")
    data_file, items = job.dataset.load()
    offset, items = shard(job.dataset.first(data_file, items), job.num_node, job.node_index)
    ckpt = resolve_checkpoint(job.checkpoint)
    config = check_checkpoint(ckpt)  # before the accelerate state exists
    tokenizer = load_tokenizer(ckpt)
    # before any output folder or lock exists: a job that cannot decode anything leaves nothing behind
    prepared = prepare_prompts(items, tokenizer, job.rollout, job.dataset.data_type,
                               config.get("max_position_embeddings"))
    state = make_state()
    stop_ids = stop_ids_for(tokenizer, job.rollout)
    inputs = input_fingerprint(content_fingerprint(ckpt), tokenizer, items, job.rollout, data_type=job.dataset.data_type,
                               stop_ids=stop_ids, device=state.device, index_offset=offset)
    record = {**inputs, "evaluation.output_unmasking_history": job.keep_step_maps}
    with main_process_locks([out_path], state):
        if finished_rollout(out_path, record, job, state, ckpt, data_file):
            if state.is_main_process:
                print(f"{out_path} is finished with the same inputs: nothing to do (evaluation.restart=true decodes "
                      "it again)")
            return out_path if state.is_main_process else None
        model, tokenizer, stop_ids = setup(ckpt, job.rollout, state)
        partials = Partials(out_path, inputs, job.restart, ckpt, data_file)
        results, stats = rollout(model, tokenizer, items, job.rollout, data_type=job.dataset.data_type,
                                 stop_ids=stop_ids, state=state, partials=partials, index_offset=offset,
                                 prepared=prepared)
        if not state.is_main_process:
            return None
        if not job.keep_step_maps:
            for item in results:
                if "step_map" in item:
                    item["step_map"] = [[] for _ in item["step_map"]]
        # the fingerprint first: a crash before the rollout file leaves a resumable run, never an unmarked file
        atomic_write_json(inputs_file(out_path), record)
        # the kernel that ran, as the trainer's config.yaml records it (`auto` resolved; not in the fingerprint)
        atomic_write_text(config_file(out_path), snapshot_yaml(
            job.config, **{"rollout.attn_implementation": model.config._attn_implementation}))
        atomic_write_json(out_path, results)
        remove_partials(out_path)
    summary = summarize(results, stats)
    for item in results:
        if "error" in item:
            print(f"{data_file}: skipped {item['error']}", file=sys.stderr)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}))
    print(f"wrote {out_path}")
    return out_path
