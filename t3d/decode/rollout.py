"""Decode a dataset with the block-diffusion decoder: prompts, replicas, batching, processes, resume.

Shared by `sample/sdar_sample.py` (rollouts with trajectories) and `eval.py` (few-step evaluation).
Under `accelerate launch` every process decodes a strided share of the prompts and the main process
gathers the results in input order; as a plain script it is the same code with one process.
A crash loses at most one batch: finished sequences are appended to per-process `.partial` files
and skipped on rerun. Each partial file starts with a fingerprint of every input that determines its
sequences (weights and tokenizer content, the items decoded, each decoding setting, replicas, seed);
a rerun whose inputs differ is refused with one line naming what changed, unless
`evaluation.restart=true` discards the partial files and starts fresh.
"""
import hashlib
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from t3d.model.checkpoint import DTYPES
from t3d.common.config import ConfigError
from t3d.decode.decoder import STRATEGIES, DecodeConfig, generate, sequence_seeds
from t3d.tasks.answers import extract_answer
from t3d.tasks.loading import load_records, section_options
from t3d.common.io import DataError, append_text, atomic_write_text
from t3d.common.paths import output_root
from t3d.tasks.prompting import DATA_TYPES, build_prompt, encode_prompt


def check_max_items(max_items):
    """`evaluation.max_items`: null = all items, a positive int = the first N; anything else is an error."""
    if max_items is None or (isinstance(max_items, int) and not isinstance(max_items, bool) and max_items > 0):
        return max_items
    raise ConfigError(f"evaluation.max_items must be a positive integer or null (= all items), got {max_items!r}")


def load_items(name_or_path, max_items=None, **options):
    """(source, items); `max_items` keeps the first N (a quick look at a big set). `options`: split, subset,
    columns, answer_format, key_prefix of t3d.tasks.loading.load_records (a hub dataset's source is a label)."""
    max_items = check_max_items(max_items)
    source, items = load_records(name_or_path, **options)
    if max_items is not None and max_items > len(items):
        print(f"note: evaluation.max_items={max_items} but {source} has {len(items)} items: using all {len(items)}",
              file=sys.stderr)
    return source, items[:max_items] if max_items else items


def dataset_options(evaluation_cfg):
    """load_items options from the `evaluation:` section (evaluation.dataset_split, ..._columns, ...)."""
    return section_options(evaluation_cfg, "evaluation.dataset_")


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


def _check(ok, key, value, expected):
    if not ok:
        raise ConfigError(f"{key} must be {expected}, got {value!r}")


def number_setting(section, key, kind=int):
    """section[key] as int/float; null or a non-number (a null override passes the schema) is an error."""
    value = section[key.rsplit(".", 1)[-1]]
    kinds = (int, float) if kind is float else (int,)
    _check(isinstance(value, kinds) and not isinstance(value, bool), key, value,
           "a number" if kind is float else "an integer")
    return kind(value)


def check_rollout_section(rollout_cfg):
    """Every `rollout:` value with a valid range; one line naming the key (before anything is loaded)."""
    r = rollout_cfg
    for key in ("block_size", "denoising_steps_per_block", "max_token", "num_response_per_task", "max_active"):
        _check(number_setting(r, f"rollout.{key}") >= 1, f"rollout.{key}", r[key], ">= 1")
    if r.denoising_steps_per_block > r.block_size:
        raise ConfigError(f"rollout.denoising_steps_per_block={r.denoising_steps_per_block} exceeds rollout.block_size="
                          f"{r.block_size}: a block of B tokens is decoded in at most B steps")
    _check(number_setting(r, "rollout.temperature", float) >= 0, "rollout.temperature", r.temperature, ">= 0 (0 = greedy)")
    _check(0 < number_setting(r, "rollout.top_p", float) <= 1, "rollout.top_p", r.top_p, "in (0, 1]")
    _check(number_setting(r, "rollout.top_k") >= 0, "rollout.top_k", r.top_k, ">= 0 (0 = off)")
    _check(str(r.remasking_strategy) in STRATEGIES, "rollout.remasking_strategy", r.remasking_strategy,
           f"one of {', '.join(STRATEGIES)}")
    _check(0 < number_setting(r, "rollout.dynamic_threshold", float) <= 1, "rollout.dynamic_threshold", r.dynamic_threshold,
           "in (0, 1]")
    _check(0 <= number_setting(r, "rollout.random_init_ratio", float) < 1, "rollout.random_init_ratio", r.random_init_ratio,
           "in [0, 1)")
    _check(r.batch_size is None or number_setting(r, "rollout.batch_size") >= 0, "rollout.batch_size", r.batch_size,
           ">= 0 (0 = all at once)")
    number_setting(r, "rollout.seed")
    _check(str(r.dtype) == "auto" or str(r.dtype) in DTYPES, "rollout.dtype", r.dtype,
           f"one of auto, {', '.join(DTYPES)}")
    stops = r.stop_token_list
    _check(stops is None or all(isinstance(t, str) and t for t in stops), "rollout.stop_token_list", stops,
           "a list of non-empty strings")
    if r.tensor_parallel_size != 1:
        raise ConfigError("rollout.tensor_parallel_size must be 1: every process holds the whole model; "
                          "scale out with `accelerate launch` (one process per GPU)")


def check_job_config(cfg):
    """Checks shared by sdar_sample.py and eval.py, before any data or model is read."""
    check_rollout_section(cfg.rollout)
    ev = cfg.evaluation
    check_max_items(ev.max_items)
    _check(str(ev.data_type) in DATA_TYPES, "evaluation.data_type", ev.data_type, f"one of {', '.join(DATA_TYPES)}")
    _check(number_setting(ev, "evaluation.num_node") >= 1, "evaluation.num_node", ev.num_node, ">= 1")
    _check(0 <= number_setting(ev, "evaluation.node_index") < ev.num_node, "evaluation.node_index", ev.node_index,
           f"in [0, num_node={ev.num_node})")
    _check(isinstance(ev.eval_dataset, str) and ev.eval_dataset.strip(), "evaluation.eval_dataset", ev.eval_dataset,
           "a dataset name or path")
    _check(isinstance(cfg.experiment.project, str) and cfg.experiment.project.strip(), "experiment.project",
           cfg.experiment.project, "a non-empty name")


def decode_config(rollout_cfg, **overrides):
    """DecodeConfig from the `rollout:` section of sdar_sample.yaml / eval.yaml (ConfigError if invalid)."""
    check_rollout_section(rollout_cfg)
    try:
        return _decode_config(rollout_cfg, **overrides)
    except ValueError as err:
        raise ConfigError(f"rollout: {err}") from None


def _decode_config(rollout_cfg, **overrides):
    settings = dict(
        block_size=int(rollout_cfg.block_size),
        steps_per_block=int(rollout_cfg.denoising_steps_per_block),
        max_new_tokens=int(rollout_cfg.max_token),
        temperature=float(rollout_cfg.temperature),
        top_k=int(rollout_cfg.top_k),
        top_p=float(rollout_cfg.top_p),
        strategy=str(rollout_cfg.remasking_strategy),
        dynamic_threshold=float(rollout_cfg.dynamic_threshold),
        random_init_ratio=float(rollout_cfg.random_init_ratio),
    )
    settings.update(overrides)
    return DecodeConfig(**settings)


# DecodeConfig field -> the config key a user sets (named in resume refusals)
_SETTING_KEYS = {"block_size": "rollout.block_size", "steps_per_block": "rollout.denoising_steps_per_block",
                 "max_new_tokens": "rollout.max_token", "temperature": "rollout.temperature", "top_k": "rollout.top_k",
                 "top_p": "rollout.top_p", "strategy": "rollout.remasking_strategy",
                 "dynamic_threshold": "rollout.dynamic_threshold", "random_init_ratio": "rollout.random_init_ratio",
                 "stop_at_eos": "stop_at_eos"}
RESTART_HINT = "pass evaluation.restart=true to discard them and start fresh"


def _digest(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()[:16]


def input_fingerprint(model, tokenizer, items, *, checkpoint_path, decode_cfg, num_responses, seed, data_type,
                      start_with_think, stop_ids, index_offset):
    """{component: value} of everything that determines the decoded sequences, in the order a change is reported."""
    from t3d.model.checkpoint import content_fingerprint

    param = next(model.parameters())
    inputs = dict(content_fingerprint(checkpoint_path))  # weights (+ model config), tokenizer files
    inputs["data"] = _digest({"offset": index_offset, "items": items})
    inputs.update({_SETTING_KEYS[k]: v for k, v in asdict(decode_cfg).items()})
    inputs.update({
        "rollout.num_response_per_task": num_responses, "rollout.seed": seed, "evaluation.data_type": data_type,
        "rollout.start_with_think": bool(start_with_think), "rollout.stop_token_list": sorted(int(i) for i in stop_ids),
        "rollout.dtype": str(param.dtype).removeprefix("torch."), "device": param.device.type,
        "mask/pad ids": [tokenizer.mask_token_id, tokenizer.pad_token_id],
    })
    return inputs


def _describe_change(old, new, checkpoint_path, data_source):
    changed = [key for key in new if old.get(key) != new[key]] + [key for key in old if key not in new]
    what = []
    for key in changed:
        if key == "weights":
            what.append(f"other weights (the model files in {checkpoint_path} changed)")
        elif key == "tokenizer":
            what.append(f"another tokenizer (the tokenizer files in {checkpoint_path} changed)")
        elif key == "data":
            what.append(f"other data (the items decoded from {data_source or 'the dataset'} changed)")
        else:
            what.append(f"{key}={old.get(key)!r} (now {new.get(key)!r})")
    return ", ".join(what)


def _read_partial(paths, inputs, *, checkpoint_path, data_source):
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
        if header != inputs:
            raise ConfigError(f"{path}: partial results of an interrupted run were decoded with "
                              f"{_describe_change(header, inputs, checkpoint_path, data_source)}; {RESTART_HINT}")
        for rec in records[1:]:
            if isinstance(rec, dict) and {"item", "replica", "ids", "steps", "nfe", "prefill", "finished"} <= rec.keys():
                done[(rec["item"], rec["replica"])] = rec
    return done


def _open_partials(partial_prefix, inputs, state, restart, **where):
    """Finished sequences to reuse and this process's partial file (its fingerprint header written)."""
    partial_prefix = Path(partial_prefix)
    partial_prefix.parent.mkdir(parents=True, exist_ok=True)
    pattern = partial_prefix.name + ".partial.rank*.jsonl"
    mine = partial_prefix.parent / f"{partial_prefix.name}.partial.rank{state.process_index}.jsonl"
    if restart:
        if state.is_main_process:
            for old in partial_prefix.parent.glob(pattern):
                old.unlink()
        state.wait_for_everyone()  # nobody writes before the old files are gone
        done = {}
    else:
        done = _read_partial(sorted(partial_prefix.parent.glob(pattern)), inputs, **where)
        state.wait_for_everyone()  # every process has read the others' files before any appends
    if restart or not _has_header(mine):  # new or empty (the header is written atomically)
        atomic_write_text(mine, json.dumps({"t3d_partial_inputs": inputs}) + "\n")
    return done, mine


def _has_header(path):
    if not path.is_file():
        return False
    first = path.read_text(encoding="utf-8").split("\n", 1)[0]
    try:
        return "t3d_partial_inputs" in json.loads(first)
    except json.JSONDecodeError:
        return False


def rollout(model, tokenizer, items, *, data_type, decode_cfg: DecodeConfig, num_responses=1, seed=0,
            batch_size=0, start_with_think=False, stop_ids=(), partial_prefix=None, state=None,
            progress=True, checkpoint_path=None, index_offset=0, restart=False, data_source=None):
    """Decode `num_responses` replicas of every item. Returns (results, stats) on the main process.

    results: the input items, each extended with prompt, full_output, response_ids, step_map,
    extracted_output, response_length, nfe, finished (lists over replicas); an item that cannot be
    decoded keeps its fields plus `error`, and the others are unaffected. Other processes get (None, stats).
    `index_offset` is the position of items[0] in the whole dataset (node sharding): sequence seeds
    derive from global indices, so shards merged equal one run. With `partial_prefix`, finished
    sequences go to `<prefix>.partial.rank<i>.jsonl` and a rerun reuses them only if every input is
    unchanged (`checkpoint_path` names the weights; ConfigError otherwise, unless `restart`).
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    state = state or PartialState()
    max_pos = getattr(model.config, "max_position_embeddings", None)
    prompts, errors = {}, {}
    for i, item in enumerate(items):
        err = item_error(item, data_type)
        if err is None:
            text = build_prompt(tokenizer, item, data_type, start_with_think)
            ids = encode_prompt(tokenizer, text)
            if max_pos and len(ids) + decode_cfg.max_new_tokens > max_pos:
                err = f"prompt of {len(ids)} tokens + max_token {decode_cfg.max_new_tokens} exceeds the model's context {max_pos}"
            else:
                prompts[i] = (text, ids)
        if err is not None:
            errors[i] = f"item {i}: {err}"

    done, inputs = {}, None
    partial_file = None
    if partial_prefix is not None:
        inputs = input_fingerprint(
            model, tokenizer, items, checkpoint_path=checkpoint_path, decode_cfg=decode_cfg,
            num_responses=num_responses, seed=seed, data_type=data_type, start_with_think=start_with_think,
            stop_ids=stop_ids, index_offset=index_offset)
        done, partial_file = _open_partials(partial_prefix, inputs, state, restart,
                                            checkpoint_path=checkpoint_path, data_source=data_source)

    jobs = [(i, r) for i in prompts for r in range(num_responses) if (i, r) not in done]
    jobs.sort(key=lambda job: len(prompts[job[0]][1]))  # similar lengths share a batch: less padding
    mine = jobs[state.process_index::state.num_processes]
    step = batch_size if batch_size and batch_size > 0 else max(len(mine), 1)
    results = []
    started = time.perf_counter()
    forwards = 0
    bar = tqdm(total=len(mine), desc="decoding", unit="seq", disable=not (progress and state.is_local_main_process))
    for start in range(0, len(mine), step):
        chunk = mine[start:start + step]
        out = generate(
            model, [prompts[i][1] for i, _ in chunk], decode_cfg,
            mask_id=tokenizer.mask_token_id, pad_id=tokenizer.pad_token_id, stop_ids=stop_ids,
            seeds=sequence_seeds(seed, [(index_offset + i) * num_responses + r for i, r in chunk]), vocab_for_random=len(tokenizer),
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
    stats = {"seconds": elapsed, "batch_forwards": forwards, "processes": state.num_processes,
             "inputs": inputs}
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
        "tokens_per_second": tokens / max(stats["seconds"], 1e-9),
    }


def shard(items, num_node, node_index):
    """Contiguous shard `node_index` of `num_node` (as the original): (offset, items)."""
    if not 0 <= node_index < num_node:
        raise DataError(f"evaluation.node_index {node_index} must be in [0, num_node={num_node})")
    lo, hi = len(items) * node_index // num_node, len(items) * (node_index + 1) // num_node
    return lo, items[lo:hi]


def dataset_name(cfg):
    """Output name of the `evaluation:` section's dataset: its file stem, plus the hub subset and split when
    chosen (hub:openai/gsm8k with subset main, split test -> gsm8k-main-test), so two splits never share a file."""
    ev = cfg.evaluation
    parts = [Path(str(ev.eval_dataset)).stem] + [str(v) for v in (ev.get("dataset_subset"), ev.get("dataset_split"))
                                                  if v not in (None, "")]
    return "-".join(parts)


def output_path(cfg):
    """<output_dir>/<project>/temp_data/outputs[-<node>]-eval-<checkpoint>-<dataset>.json (the original's name)."""
    base = Path(cfg.experiment.output_dir) if cfg.experiment.output_dir else output_root()
    ckpt = Path(str(cfg.evaluation.checkpoint_path).rstrip("/")).name
    dataset = dataset_name(cfg)
    node = f"-{cfg.evaluation.node_index}" if cfg.evaluation.num_node > 1 else ""
    return base / cfg.experiment.project / "temp_data" / f"outputs{node}-eval-{ckpt}-{dataset}.json"


def setup(cfg):
    """Model, tokenizer and stop ids for the `rollout:`/`evaluation:` sections (shared with eval.py)."""
    import torch

    from accelerate import PartialState

    from t3d.model.checkpoint import load, stop_token_ids

    check_rollout_section(cfg.rollout)

    # cpu=True: without it a CPU `accelerate launch` rank can come up alone instead of joining gloo
    state = PartialState(cpu=not torch.cuda.is_available())
    dtype = str(cfg.rollout.dtype)
    if dtype == "auto":
        dtype = "bf16" if state.device.type == "cuda" else "fp32"
    model, tokenizer, path = load(cfg.evaluation.checkpoint_path, dtype=dtype, device=state.device)
    stop_ids = stop_token_ids(tokenizer)
    for text in cfg.rollout.stop_token_list or []:
        ids = tokenizer(str(text), add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ConfigError(f"rollout.stop_token_list entry {text!r} is {len(ids)} tokens; stop strings must be one token")
        stop_ids.append(ids[0])
    trained_b = getattr(model.config, "block_size", None)
    if trained_b is not None and int(trained_b) != int(cfg.rollout.block_size):
        import warnings

        warnings.warn(f"rollout.block_size={cfg.rollout.block_size} differs from the block size the model was "
                      f"trained with ({trained_b}, config.json 'block_size'); quality will suffer", stacklevel=2)
    torch.manual_seed(int(cfg.rollout.seed))
    return state, model, tokenizer, path, stop_ids


def check_checkpoint_path(value, key="evaluation.checkpoint_path"):
    """A non-empty path or hub id (an empty value would otherwise mean the embedded default)."""
    if not isinstance(value, str) or not value.strip() or value.strip() in ("null", "None"):
        raise ConfigError(f"{key} must be a checkpoint directory or hub id, got {value!r}")
    return value


def run_rollout_job(cfg):
    """sdar_sample.py: decode the (sharded) dataset and write the rollout file. Returns its path."""
    from t3d.model.checkpoint import check_checkpoint, resolve_checkpoint
    from t3d.common.config import save_config
    from t3d.common.io import atomic_write_json, check_output_dir

    check_job_config(cfg)
    check_checkpoint_path(cfg.evaluation.checkpoint_path)
    decode_cfg = decode_config(cfg.rollout)
    out_path = output_path(cfg)
    check_output_dir(out_path.parent, "experiment.output_dir")
    data_file, items = load_items(cfg.evaluation.eval_dataset, cfg.evaluation.max_items,
                                  **dataset_options(cfg.evaluation))
    offset, items = shard(items, int(cfg.evaluation.num_node), int(cfg.evaluation.node_index))
    check_checkpoint(resolve_checkpoint(cfg.evaluation.checkpoint_path))  # before the accelerate state exists
    state, model, tokenizer, ckpt, stop_ids = setup(cfg)
    results, stats = rollout(
        model, tokenizer, items, data_type=str(cfg.evaluation.data_type), decode_cfg=decode_cfg,
        num_responses=int(cfg.rollout.num_response_per_task), seed=int(cfg.rollout.seed),
        batch_size=min(int(cfg.rollout.batch_size or 0) or 10**9, int(cfg.rollout.max_active)),
        start_with_think=bool(cfg.rollout.start_with_think), stop_ids=stop_ids, partial_prefix=out_path,
        state=state, checkpoint_path=ckpt, index_offset=offset, restart=bool(cfg.evaluation.restart),
        data_source=data_file,
    )
    if not state.is_main_process:
        return None
    if not cfg.evaluation.output_unmasking_history:
        for item in results:
            if "step_map" in item:
                item["step_map"] = [[] for _ in item["step_map"]]
    atomic_write_json(out_path, results)
    save_config(cfg, out_path.parent, out_path.stem + ".config.yaml")
    for partial in out_path.parent.glob(out_path.name + ".partial.rank*.jsonl"):
        partial.unlink()
    summary = summarize(results, stats)
    for item in results:
        if "error" in item:
            print(f"{data_file}: skipped {item['error']}", file=sys.stderr)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}))
    print(f"wrote {out_path}")
    return out_path
