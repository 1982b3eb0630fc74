"""Typed settings of the rollout job, parsed and validated once from its OmegaConf config.

`RolloutJob.from_config(cfg)` is the only place that reads the `experiment:`, `rollout:` and `evaluation:`
sections of sdar_sample.yaml; every check names its key in one line. The eval job (t3d.eval.settings) and the
lm-eval model build the same DatasetSettings / RolloutSettings. Below this boundary no code sees the raw config;
the resolved config travels only as a snapshot to save beside the outputs.
"""
import copy
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from omegaconf import OmegaConf

from t3d.common.config import ConfigError
from t3d.common.paths import output_root
from t3d.decode.decoder import STRATEGIES, DecodeConfig
from t3d.model.checkpoint import ATTN_IMPLEMENTATIONS, DTYPES
from t3d.tasks.loading import check_options, is_hub, load_records
from t3d.tasks.prompting import DATA_TYPES


def check(ok, key, value, expected):
    if not ok:
        raise ConfigError(f"{key} must be {expected}, got {value!r}")


def number_setting(section, key, kind=int):
    """section[key] as int/float; null or a non-number (a null override passes the schema) is an error."""
    value = section[key.rsplit(".", 1)[-1]]
    kinds = (int, float) if kind is float else (int,)
    check(isinstance(value, kinds) and not isinstance(value, bool), key, value,
          "a number" if kind is float else "an integer")
    return kind(value)


def check_max_items(max_items):
    """`evaluation.max_items`: null = all items, a positive int = the first N; anything else is an error."""
    if max_items is None or (isinstance(max_items, int) and not isinstance(max_items, bool) and max_items > 0):
        return max_items
    raise ConfigError(f"evaluation.max_items must be a positive integer or null (= all items), got {max_items!r}")


def check_checkpoint_path(value, key="evaluation.checkpoint_path"):
    """A non-empty path or hub id (an empty value would otherwise mean the embedded default)."""
    if not isinstance(value, str) or not value.strip() or value.strip() in ("null", "None"):
        raise ConfigError(f"{key} must be a checkpoint directory or hub id, got {value!r}")
    return value


def plain(value):
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


# ------------------------------------------------------------------------------------------------- dataset
@dataclass(frozen=True)
class DatasetSettings:
    """Which items are decoded: a data/<name>, a file or hub:<owner>/<name>, its hub split/subset, column mapping
    and answer format, the task type and the first `max_items` (None = all)."""

    spec: str
    data_type: str = "math"
    max_items: int | None = None
    split: str | None = None
    subset: str | None = None
    columns: tuple = ()  # ((toolkit key, source column), ...)
    answer_format: str | None = None
    key_prefix: str = "evaluation.dataset_"

    @classmethod
    def from_section(cls, ev):
        """From the `evaluation:` section."""
        check_max_items(ev.max_items)
        check(str(ev.data_type) in DATA_TYPES, "evaluation.data_type", ev.data_type, f"one of {', '.join(DATA_TYPES)}")
        check(isinstance(ev.eval_dataset, str) and ev.eval_dataset.strip(), "evaluation.eval_dataset",
              ev.eval_dataset, "a dataset name or path")
        options = {k: plain(ev.get(f"dataset_{k}")) for k in ("split", "subset", "columns", "answer_format")}
        options["columns"] = check_options("evaluation.dataset_", **options, hub=is_hub(ev.eval_dataset))
        return cls(spec=str(ev.eval_dataset), data_type=str(ev.data_type), max_items=ev.max_items,
                   split=options["split"], subset=options["subset"], columns=tuple(options["columns"].items()),
                   answer_format=options["answer_format"])

    @property
    def name(self):
        """Output name: the file stem, plus the hub subset and split when chosen (hub:openai/gsm8k with subset
        main, split test -> gsm8k-main-test), so two splits never share a file."""
        parts = [Path(self.spec).stem] + [str(v) for v in (self.subset, self.split) if v not in (None, "")]
        return "-".join(parts)

    def options(self):
        """load_records keyword arguments."""
        return {"split": self.split, "subset": self.subset, "columns": dict(self.columns) or None,
                "answer_format": self.answer_format, "key_prefix": self.key_prefix}

    def load(self):
        """(source, every item); `first()` applies max_items."""
        return load_records(self.spec, **self.options())

    def first(self, source, items):
        if self.max_items is not None and self.max_items > len(items):
            print(f"note: evaluation.max_items={self.max_items} but {source} has {len(items)} items: using all "
                  f"{len(items)}", file=sys.stderr)
        return items[:self.max_items] if self.max_items else items


# ------------------------------------------------------------------------------------------------- rollout
@dataclass(frozen=True)
class RolloutSettings:
    """How items are decoded: the decoder's settings plus replicas, seed, batching, prompt and stop options."""

    decode: DecodeConfig = field(default_factory=DecodeConfig)
    num_responses: int = 1
    seed: int = 0
    batch_size: int = 0  # prompts per decoding chunk (progress is saved after each); 0 = all at once
    max_active: int = 10**9  # most sequences in one batch
    start_with_think: bool = False
    stop_strings: tuple = ()  # extra single-token stop strings
    dtype: str = "auto"
    attn_implementation: str = "auto"  # auto = the checkpoint's own kernel where it runs well here, else sdpa

    @classmethod
    def from_section(cls, r):
        """From the `rollout:` section; every value with a valid range, one line naming the key."""
        for key in ("block_size", "denoising_steps_per_block", "max_token", "num_response_per_task", "max_active"):
            check(number_setting(r, f"rollout.{key}") >= 1, f"rollout.{key}", r[key], ">= 1")
        if r.denoising_steps_per_block > r.block_size:
            raise ConfigError(f"rollout.denoising_steps_per_block={r.denoising_steps_per_block} exceeds rollout.block_size="
                              f"{r.block_size}: a block of B tokens is decoded in at most B steps")
        check(number_setting(r, "rollout.temperature", float) >= 0, "rollout.temperature", r.temperature, ">= 0 (0 = greedy)")
        check(0 < number_setting(r, "rollout.top_p", float) <= 1, "rollout.top_p", r.top_p, "in (0, 1]")
        check(number_setting(r, "rollout.top_k") >= 0, "rollout.top_k", r.top_k, ">= 0 (0 = off)")
        check(str(r.remasking_strategy) in STRATEGIES, "rollout.remasking_strategy", r.remasking_strategy,
              f"one of {', '.join(STRATEGIES)}")
        check(0 < number_setting(r, "rollout.dynamic_threshold", float) <= 1, "rollout.dynamic_threshold",
              r.dynamic_threshold, "in (0, 1]")
        check(0 <= number_setting(r, "rollout.random_init_ratio", float) < 1, "rollout.random_init_ratio",
              r.random_init_ratio, "in [0, 1)")
        check(r.batch_size is None or number_setting(r, "rollout.batch_size") >= 0, "rollout.batch_size", r.batch_size,
              ">= 0 (0 = all at once)")
        check(0 <= number_setting(r, "rollout.seed") < 2**32, "rollout.seed", r.seed, "in [0, 2**32)")  # as training's
        check(str(r.dtype) == "auto" or str(r.dtype) in DTYPES, "rollout.dtype", r.dtype,
              f"one of auto, {', '.join(DTYPES)}")
        attn = str(r.get("attn_implementation", "auto"))
        check(attn in ATTN_IMPLEMENTATIONS, "rollout.attn_implementation", attn, f"one of {', '.join(ATTN_IMPLEMENTATIONS)}")
        stops = plain(r.stop_token_list)
        check(stops is None or all(isinstance(t, str) and t for t in stops), "rollout.stop_token_list", stops,
              "a list of non-empty strings")
        if r.tensor_parallel_size != 1:
            raise ConfigError("rollout.tensor_parallel_size must be 1: every process holds the whole model; "
                              "scale out with `accelerate launch` (one process per GPU)")
        try:
            decode = DecodeConfig(
                block_size=int(r.block_size), steps_per_block=int(r.denoising_steps_per_block),
                max_new_tokens=int(r.max_token), temperature=float(r.temperature), top_k=int(r.top_k),
                top_p=float(r.top_p), strategy=str(r.remasking_strategy), dynamic_threshold=float(r.dynamic_threshold),
                random_init_ratio=float(r.random_init_ratio))
        except ValueError as err:
            raise ConfigError(f"rollout: {err}") from None
        return cls(decode=decode, num_responses=int(r.num_response_per_task), seed=int(r.seed),
                   batch_size=int(r.batch_size or 0), max_active=int(r.max_active),
                   start_with_think=bool(r.start_with_think), stop_strings=tuple(stops or ()), dtype=str(r.dtype),
                   attn_implementation=attn)

    @property
    def chunk_size(self):
        """Sequences per generate() call: batch_size (0 = all) capped at max_active."""
        return min(self.batch_size or 10**9, self.max_active)

    def with_decode(self, **changes):
        return replace(self, decode=replace(self.decode, **changes))


# ------------------------------------------------------------------------------------------------- the job
@dataclass(frozen=True)
class RolloutJob:
    """sdar_sample.py: decode shard `node_index` of `num_node` of a dataset into one rollout file."""

    checkpoint: str  # as given: a directory or hub id
    dataset: DatasetSettings
    rollout: RolloutSettings
    project_dir: Path  # <output_dir>/<project>
    num_node: int = 1
    node_index: int = 0
    restart: bool = False
    keep_step_maps: bool = True  # evaluation.output_unmasking_history
    config: dict = field(default_factory=dict, compare=False)  # the resolved config, saved beside the output

    @classmethod
    def from_config(cls, cfg):
        rollout = RolloutSettings.from_section(cfg.rollout)
        ev = cfg.evaluation
        dataset = DatasetSettings.from_section(ev)
        check(number_setting(ev, "evaluation.num_node") >= 1, "evaluation.num_node", ev.num_node, ">= 1")
        check(0 <= number_setting(ev, "evaluation.node_index") < ev.num_node, "evaluation.node_index", ev.node_index,
              f"in [0, num_node={ev.num_node})")
        return cls(checkpoint=check_checkpoint_path(plain(ev.checkpoint_path)), dataset=dataset, rollout=rollout,
                   project_dir=project_dir(cfg.experiment), num_node=int(ev.num_node), node_index=int(ev.node_index),
                   restart=bool(ev.restart), keep_step_maps=bool(ev.output_unmasking_history),
                   config=OmegaConf.to_container(cfg, resolve=True))

    @property
    def output_path(self):
        """<output_dir>/<project>/temp_data/outputs[-<node>]-eval-<checkpoint>-<dataset>.json (the original's name)."""
        ckpt = Path(self.checkpoint.rstrip("/")).name
        node = f"-{self.node_index}" if self.num_node > 1 else ""
        return self.project_dir / "temp_data" / f"outputs{node}-eval-{ckpt}-{self.dataset.name}.json"

    def config_yaml(self):
        return snapshot_yaml(self.config)


def project_dir(experiment):
    """<output_dir>/<project> of the `experiment:` section (output_dir null: t3d.common.paths.output_root())."""
    check(isinstance(experiment.project, str) and experiment.project.strip(), "experiment.project",
          experiment.project, "a non-empty name")
    base = Path(experiment.output_dir) if experiment.output_dir else output_root()
    return base / experiment.project


def snapshot_yaml(config, **dotted):
    """The resolved config snapshot as YAML, with dotted keys replaced (what one output was made with)."""
    cfg = OmegaConf.create(copy.deepcopy(config))
    for key, value in dotted.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return OmegaConf.to_yaml(cfg, resolve=True)
