"""lm-evaluation-harness model `sdar_bd`: SDAR block-diffusion checkpoints decoded by the toolkit's decoder.

lm-eval (0.4.13) has no plugin entry point for models: a model exists once a module using `@register_model`
is imported. This module registers `sdar_bd` and is also a launcher for lm-eval's own CLI:

    python -m t3d.integrations.lm_eval --model sdar_bd \
        --model_args pretrained=models/sdar-tiny,block_size=4,denoising_steps=1 \
        --tasks t3d_synthetic_math_smoke --include_path t3d/integrations/lm_eval_tasks \
        --apply_chat_template --batch_size 64 --output_path lm_eval_out

From Python: `import t3d.integrations.lm_eval`, then `lm_eval.simple_evaluate(model="sdar_bd", ...)`.

`generate_until` groups requests by decoding settings, sorts them by prompt length and decodes batches of
`--batch_size` with `t3d.decode.decoder.generate` (on CPU with `num_threads` threads, default 1 as in eval.py).
Sequence seeds are `sequence_seeds(seed, doc_id * repeats + replica)`, eval.py's `item * k + replica`, so
outputs do not depend on batching and equal eval.py's for the same prompt. Outputs are cut at the first
`until` string (as lm-eval's HF model does); an `until` string that is a single token also ends decoding
early. The decoding cost (NFE, tokens per forward, generated tokens) goes into the results'
`config.sdar_cost`, is printed, and the launcher writes it as `sdar_cost_<date>.json` beside lm-eval's
`results_<date>.json`.
"""
import json
import logging
import os
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, astuple
from pathlib import Path

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import normalize_gen_kwargs, postprocess_generated_text

from t3d.common import cli  # noqa: F401  (environment defaults shared by the entry scripts)
from t3d.common.config import ConfigError
from t3d.common.io import DataError, atomic_write_json

logger = logging.getLogger(__name__)

NAME = "sdar_bd"
MODEL_ARGS = ("pretrained", "block_size", "denoising_steps", "remasking", "dynamic_threshold", "temperature",
              "top_k", "top_p", "max_gen_toks", "seed", "dtype", "attn_implementation", "device", "num_threads", "batch_size",
              "max_batch_size")
SAMPLING_KEYS = ("do_sample", "temperature", "top_k", "top_p")  # the gen_kwargs the decoder honours besides
DEFAULT_AUTO_BATCH = 64                                          # until and max_gen_toks
LOGLIKELIHOOD_MESSAGE = (
    f"{NAME}: block-diffusion SDAR models have no left-to-right token likelihood; they are evaluated with "
    "generation tasks here (output_type: generate_until, e.g. gsm8k, minerva_math, humaneval)")


@register_model(NAME)
class SDARBlockDiffusionLM(LM):
    """SDAR checkpoint + the toolkit's block-diffusion decoder, as an lm-eval generation model."""

    def __init__(self, pretrained=None, block_size=4, denoising_steps=4, remasking="low_confidence_static",
                 dynamic_threshold=0.9, temperature=0.0, top_k=0, top_p=1.0, max_gen_toks=256, seed=0,
                 dtype="auto", attn_implementation="auto", device=None, num_threads=1, batch_size=1, max_batch_size=None, trust_remote_code=None,
                 **unknown):
        super().__init__()
        import torch

        from t3d.model.checkpoint import load, stop_token_ids
        from t3d.decode.decoder import DecodeConfig
        from t3d.decode.settings import RolloutSettings

        if unknown:
            raise ConfigError(f"{NAME} model_args: unknown key '{sorted(unknown)[0]}'; expected one of "
                              f"{', '.join(MODEL_ARGS)}")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError(f"{NAME} decodes in one process: run it without accelerate launch / torchrun "
                              "(one lm-eval process per GPU, e.g. one per task)")
        try:  # the settings type eval.py and sdar_sample.py decode with
            self.settings = RolloutSettings(decode=DecodeConfig(
                block_size=int(block_size), steps_per_block=int(denoising_steps), max_new_tokens=int(max_gen_toks),
                temperature=float(temperature), top_k=int(top_k), top_p=float(top_p), strategy=str(remasking),
                dynamic_threshold=float(dynamic_threshold)), seed=int(seed), dtype=str(dtype))
        except ValueError as err:
            raise ConfigError(f"{NAME} model_args: {err}") from None
        self.num_threads = int(num_threads)  # CPU only, as eval.py's evaluation.num_threads; 0 = torch's default
        self._warn_temperature_override = float(temperature) > 0  # tasks usually pin do_sample=False
        self.batch_size = self._batch_size(batch_size, max_batch_size)
        if device is None or (str(device).startswith("cuda") and not torch.cuda.is_available()):
            if device is not None:  # lm-eval's CLI asks for cuda:0 unless told otherwise: not worth a warning
                logger.info("%s: device %s requested but CUDA is not available; using the CPU", NAME, device)
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = self.settings.dtype
        if dtype == "auto":
            dtype = "bf16" if str(device).startswith("cuda") else "fp32"
        self.model, self.tokenizer, self.checkpoint = load(pretrained, dtype=dtype, device=device,
                                                           attn_implementation=attn_implementation)
        self.attn_implementation = self.model.config._attn_implementation  # what auto chose here
        self._device = self.model.device
        self.dtype = str(dtype)
        self.stop_ids = stop_token_ids(self.tokenizer)
        trained_b = getattr(self.model.config, "block_size", None)
        if trained_b is not None and int(trained_b) != self.settings.decode.block_size:
            logger.warning("%s: block_size=%d differs from the block size the model was trained with (%s, "
                           "config.json 'block_size'); quality will suffer", NAME, self.settings.decode.block_size, trained_b)
        self._chat_templated = False
        self._records = []  # one per decoded request: task, tokens, nfe, finished, stopped_by_until, settings
        self._batch_forwards = 0
        self._decode_seconds = 0.0

    @staticmethod
    def _batch_size(batch_size, max_batch_size):
        """lm-eval's --batch_size: an int, or "auto"/"auto:N" = up to --max_batch_size (default 64) at once."""
        if str(batch_size).startswith("auto"):
            return int(max_batch_size or DEFAULT_AUTO_BATCH)
        try:
            value = int(batch_size)
        except ValueError:
            value = 0
        if value < 1:
            raise ConfigError(f"{NAME}: --batch_size must be a positive integer or 'auto', got {batch_size!r}")
        return value

    # ------------------------------------------------------------------------------------------ lm-eval API
    def loglikelihood(self, requests, disable_tqdm=False):
        raise NotImplementedError(LOGLIKELIHOOD_MESSAGE)

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        raise NotImplementedError(LOGLIKELIHOOD_MESSAGE)

    @property
    def tokenizer_name(self):
        return self.tokenizer.name_or_path.replace("/", "__")

    def chat_template(self, chat_template=False):
        return self.tokenizer.chat_template if chat_template else None

    def apply_chat_template(self, chat_history, add_generation_prompt=True):
        """The tokenizer's chat template, applied as t3d.tasks.prompting.build_prompt does (prompts equal eval.py's)."""
        self._chat_templated = True
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False, add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)

    def generate_until(self, requests, disable_tqdm=False):
        import torch
        from tqdm.auto import tqdm

        from t3d.tasks.prompting import encode_prompt

        if requests and not self._chat_templated and self.tokenizer.chat_template:
            logger.warning("%s: prompts are NOT chat-templated (no --apply_chat_template); eval.py and SDAR chat "
                           "checkpoints use the chat template, so these numbers are not comparable to eval.py's", NAME)
        max_pos = getattr(self.model.config, "max_position_embeddings", None)
        groups = {}  # one per (settings, stop ids, until): (DecodeConfig, stop ids, until, request indices)
        prompts, seed_index, replicas = [], [], Counter()
        for j, req in enumerate(requests):
            context, gen_kwargs = req.args
            cfg, stops, until = self._request_settings(gen_kwargs)
            ids = encode_prompt(self.tokenizer, context)
            where = f"{req.task_name} doc {req.doc_id}" if req.doc_id is not None else f"request {j}"
            if not ids:
                raise DataError(f"{where}: empty prompt")
            if max_pos and len(ids) + cfg.max_new_tokens > max_pos:
                raise DataError(f"{where}: prompt of {len(ids)} tokens + max_gen_toks {cfg.max_new_tokens} exceeds "
                                f"the model's context {max_pos}; lower max_gen_toks (the prompt is never cut)")
            prompts.append(ids)
            if req.doc_id is None:
                seed_index.append(j)
            else:  # eval.py's item * k + replica; lm-eval repeats a request `repeats` times in a row
                replica = replicas[req.task_name, req.doc_id]
                replicas[req.task_name, req.doc_id] += 1
                seed_index.append(req.doc_id * (req.repeats or 1) + replica)
            # DecodeConfig itself is not hashable
            groups.setdefault((astuple(cfg), stops, until), (cfg, stops, until, []))[3].append(j)

        threads = torch.get_num_threads()
        if self._device.type == "cpu" and self.num_threads > 0:
            torch.set_num_threads(self.num_threads)  # process-wide: restored below
        started = time.perf_counter()
        try:
            with tqdm(total=len(requests), desc=f"{NAME} generate_until", disable=disable_tqdm) as bar:
                outputs = self._decode(requests, groups.values(), prompts, seed_index, bar)
        finally:
            torch.set_num_threads(threads)
        self._decode_seconds += time.perf_counter() - started
        for task, figures in self.cost_report()["tasks"].items():
            print(f"{NAME} cost {task}: {figures['sequences']} sequences, {figures['generated_tokens']} generated "
                  f"tokens, NFE {figures['mean_nfe']:.2f} per sequence, {figures['tokens_per_forward']:.3f} tokens per "
                  f"forward ({figures['tokens_per_forward_no_prefill']:.3f} without the prefill)", file=sys.stderr)
        return outputs

    def _decode(self, requests, groups, prompts, seed_index, bar):
        """Texts of all requests, each group decoded in length-sorted batches; records the cost of each."""
        from t3d.decode.decoder import generate, sequence_seeds

        outputs = [None] * len(requests)
        for cfg, stops, until, members in groups:
            members.sort(key=lambda j: len(prompts[j]))  # similar lengths share a batch: less padding
            for start in range(0, len(members), self.batch_size):
                chunk = members[start:start + self.batch_size]
                out = generate(self.model, [prompts[j] for j in chunk], cfg, mask_id=self.tokenizer.mask_token_id,
                               pad_id=self.tokenizer.pad_token_id, stop_ids=stops,
                               seeds=sequence_seeds(self.settings.seed, [seed_index[j] for j in chunk]))
                self._batch_forwards += out.batch_forwards
                for j, ids, nfe, prefill, finished in zip(chunk, out.token_ids, out.nfe, out.prefill_nfe,
                                                          out.finished):
                    # a model stop token (EOS, end of turn) ends the text, as in HF generation; a one-token
                    # `until` string stays in it and is cut below with the others
                    eos_end = finished and ids[-1] in self.stop_ids
                    text = self.tokenizer.decode(ids[:-1] if eos_end else ids, skip_special_tokens=False)
                    outputs[j] = postprocess_generated_text(text, list(until), None)
                    self._records.append({
                        "task": requests[j].task_name, "tokens": len(ids), "nfe": nfe, "prefill": prefill,
                        "finished": finished,
                        "stopped_by_until": len(outputs[j]) < len(text),
                        "settings": (cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p)})
                    self.cache_hook.add_partial("generate_until", requests[j].args, outputs[j])
                bar.update(len(chunk))
        return outputs

    def get_model_info(self):
        """Added to lm-eval's results["config"]: the checkpoint, decoder settings and the decoding cost."""
        return {"model_num_parameters": self.model.num_parameters(), "model_dtype": self.dtype,
                "sdar_checkpoint": self.checkpoint, "sdar_cost": self.cost_report()}

    # ---------------------------------------------------------------------------------------------- helpers
    def _request_settings(self, gen_kwargs):
        """(DecodeConfig, stop ids, until) of one request; unsupported generation kwargs are refused."""
        from t3d.decode.decoder import DecodeConfig

        gen_kwargs = dict(gen_kwargs or {})
        sampling_given = any(key in gen_kwargs for key in ("do_sample", "temperature"))
        if not sampling_given:  # model_args temperature is the default of requests that do not set one
            gen_kwargs.update(temperature=self.settings.decode.temperature, do_sample=self.settings.decode.temperature > 0)
        kwargs = normalize_gen_kwargs(gen_kwargs, self.settings.decode.max_new_tokens)  # do_sample=False: T=0
        if sampling_given and self._warn_temperature_override and kwargs["temperature"] != self.settings.decode.temperature:
            logger.warning("%s: the request's generation kwargs (do_sample=%s, temperature=%g) override model_args "
                           "temperature=%g; set sampling with --gen_kwargs do_sample=True,temperature=...", NAME,
                           kwargs["do_sample"], kwargs["temperature"], self.settings.decode.temperature)
            self._warn_temperature_override = False  # say it once
        until = tuple(kwargs.pop("until"))
        max_new_tokens = kwargs.pop("max_gen_toks")
        unknown = sorted(set(kwargs) - set(SAMPLING_KEYS))
        if unknown:
            raise ConfigError(f"{NAME}: generation kwarg '{unknown[0]}' is not supported by the block-diffusion "
                              f"decoder (supported: until, max_gen_toks, {', '.join(SAMPLING_KEYS)})")
        try:
            cfg = DecodeConfig(**{**asdict(self.settings.decode), "max_new_tokens": int(max_new_tokens),
                                  "temperature": float(kwargs["temperature"]),
                                  "top_k": int(kwargs.get("top_k", self.settings.decode.top_k)),
                                  "top_p": float(kwargs.get("top_p", self.settings.decode.top_p))})
        except ValueError as err:
            raise ConfigError(f"{NAME}: generation kwargs {gen_kwargs}: {err}") from None
        return cfg, self._stops_with(until), until

    def _stops_with(self, until):
        """The model's stop ids plus every `until` string that is exactly one token: decoding may end there,
        since later blocks never change earlier ones and the text is cut at the string anyway."""
        extra = set()
        for text in until:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
            if len(ids) == 1 and self.tokenizer.decode(ids) == text:
                extra.add(ids[0])
        return tuple(sorted(set(self.stop_ids) | extra))

    def cost_report(self):
        """Decoding cost per task and in total, with eval.py's definitions (`t3d.decode.rollout.summarize`)."""
        from t3d.decode.rollout import summarize

        def figures(records):
            lengths, nfes = [r["tokens"] for r in records], [r["nfe"] for r in records]
            out = summarize([{"response_length": lengths, "nfe": nfes,
                              "prefill_nfe": [r["prefill"] for r in records]}],
                            {"seconds": self._decode_seconds, "batch_forwards": self._batch_forwards, "processes": 1})
            out.pop("failed_items")
            return {**out, "generated_tokens": sum(lengths), "nfe": sum(nfes),
                    "finished_rate": sum(r["finished"] for r in records) / max(len(records), 1),
                    "stopped_by_until": sum(r["stopped_by_until"] for r in records)}

        by_task = defaultdict(list)
        for rec in self._records:
            by_task[rec["task"]].append(rec)
        tasks = {}
        for task, records in by_task.items():
            tasks[task] = figures(records)
            for run_level in ("batch_forwards", "processes", "seconds", "tokens_per_second"):
                tasks[task].pop(run_level)  # batches mix tasks: time and model calls are per run
            tasks[task]["settings"] = [dict(zip(("max_gen_toks", "temperature", "top_k", "top_p"), s))
                                       for s in sorted({r["settings"] for r in records})]
        decoding = {k: v for k, v in asdict(self.settings.decode).items() if k not in ("max_new_tokens", "temperature",
                                                                                   "top_k", "top_p", "stop_at_eos")}
        return {"model": NAME, "checkpoint": self.checkpoint, "dtype": self.dtype,
                "attn_implementation": self.attn_implementation, "seed": self.settings.seed,
                "decoding": decoding, "tasks": tasks, "total": figures(self._records)}


# ----------------------------------------------------------------------------------------------------- launcher
def cost_table(cost):
    """Markdown table of a cost report, one row per task."""
    rows = ["| task | sequences | generated tokens | NFE/sequence | tokens/forward | tokens/forward without prefill "
            "| stopped by until |", "|---|---:|---:|---:|---:|---:|---:|"]
    rows += [f"| {task} | {f['sequences']} | {f['generated_tokens']} | {f['mean_nfe']:.2f} | "
             f"{f['tokens_per_forward']:.3f} | {f['tokens_per_forward_no_prefill']:.3f} | {f['stopped_by_until']} |"
             for task, f in cost["tasks"].items()]
    return "\n".join(rows) + "\n"


def write_cost_files(output_path, since):
    """For each lm-eval results file written since `since` (epoch seconds) that carries `config.sdar_cost`,
    write the cost beside it: results_<date>.json -> sdar_cost_<date>.json. Returns the paths written."""
    root = Path(output_path)
    candidates = root.parent.glob(f"{root.stem}_*.json") if root.suffix == ".json" else root.glob("*/results_*.json")
    written = []
    for path in sorted(candidates):
        if path.stat().st_mtime < since:
            continue
        cost = (json.loads(path.read_text(encoding="utf-8")).get("config") or {}).get("sdar_cost")
        if not cost:
            continue
        name = "sdar_cost_" + path.name.removeprefix("results_") if path.name.startswith("results_") \
            else f"{path.stem}_sdar_cost.json"
        written.append(atomic_write_json(path.with_name(name), {"results_file": path.name, **cost}))
        print(f"\n{NAME} decoding cost ({path.name}):\n{cost_table(cost)}wrote {written[-1]}")
    return written


def main(argv=None):
    """lm-eval's CLI with `sdar_bd` registered; expected failures end as one line on stderr (exit 2)."""
    from lm_eval._cli import HarnessCLI
    from lm_eval.utils import setup_logging

    sys.argv = ["lm-eval", *(sys.argv[1:] if argv is None else argv)]
    setup_logging()
    parser = HarnessCLI()
    args = parser.parse_args()
    started = time.time()
    try:
        parser.execute(args)
    except (ConfigError, DataError, FileNotFoundError) as err:
        if os.environ.get("T3D_DEBUG"):
            raise
        print(f"lm_eval_sdar: error: {err}", file=sys.stderr)
        sys.exit(2)
    if getattr(args, "output_path", None):
        write_cost_files(args.output_path, started - 1)


if __name__ == "__main__":
    main()
