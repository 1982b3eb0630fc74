"""Typed settings of the eval job, parsed and validated once from eval.yaml's OmegaConf config.

`EvalJob.from_config(cfg)` reads every section (experiment, rollout, evaluation, execute, sweep) and refuses a bad
value in one line naming its key; the evaluation code below it takes an EvalJob.
"""
import re
from dataclasses import dataclass, field
from pathlib import Path

from t3d.common.config import ConfigError
from t3d.decode.settings import (DatasetSettings, RolloutSettings, check_checkpoint_path, number_setting, plain,
                                 project_dir, snapshot_yaml)

DYNAMIC = "low_confidence_dynamic"


@dataclass(frozen=True)
class Setting:
    """One decoding setting of a sweep: S steps per block, strategy, threshold; `kind` says what is swept."""

    steps: int
    strategy: str
    threshold: float
    kind: str = "steps"  # "steps" (a denoising_steps value) or "threshold" (a dynamic_thresholds value)

    @property
    def label(self):
        if self.kind == "threshold":
            return f"τ={self.threshold:g}"
        return f"S={self.steps}" + (f" τ={self.threshold:g}" if self.strategy == DYNAMIC else "")


@dataclass(frozen=True)
class ExecuteSettings:
    """Code grading: parallel sandbox processes (0 = one per core), seconds per response (None = the item's, else
    3) and the address-space limit of each sandbox process."""

    num_chunk: int = 0
    test_time_limit: float | None = None
    memory_mb: int = 1024

    @classmethod
    def from_section(cls, ex):
        if number_setting(ex, "execute.num_chunk") < 0:
            raise ConfigError(f"execute.num_chunk must be >= 0 (0 = one per CPU core), got {ex.num_chunk}")
        if number_setting(ex, "execute.memory_mb") < 1:
            raise ConfigError(f"execute.memory_mb must be >= 1, got {ex.memory_mb}")
        limit = ex.test_time_limit
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0):
            raise ConfigError(f"execute.test_time_limit must be a positive number of seconds or null, got {limit!r}")
        return cls(num_chunk=int(ex.num_chunk), test_time_limit=limit, memory_mb=int(ex.memory_mb))


@dataclass(frozen=True)
class EvalJob:
    """eval.py: every (checkpoint x decoding setting) on one dataset; checkpoints are (label, path) pairs."""

    checkpoints: tuple
    settings: tuple  # of Setting, in config order
    dataset: DatasetSettings
    rollout: RolloutSettings  # the `rollout:` section; each Setting replaces its steps, strategy and threshold
    execute: ExecuteSettings
    results_root: Path  # <output_dir>/<project>/results
    restart: bool = False
    keep_step_maps: bool = True  # evaluation.output_unmasking_history
    num_threads: int = 1  # CPU torch threads; 0 = torch's default
    config: dict = field(default_factory=dict, compare=False)  # the resolved config, saved beside the results

    @classmethod
    def from_config(cls, cfg):
        if str(cfg.model_base) != "sdar":
            raise ConfigError(f"model_base '{cfg.model_base}' is not supported: eval.py evaluates SDAR block-diffusion models")
        ev = cfg.evaluation
        if int(ev.num_node) != 1 or int(ev.node_index) != 0:
            raise ConfigError("evaluation.num_node must be 1 for eval.py (metrics need the whole dataset); "
                              "scale out with `accelerate launch` instead")
        rollout = RolloutSettings.from_section(cfg.rollout)
        dataset = DatasetSettings.from_section(ev)
        results_root = project_dir(cfg.experiment) / "results"
        execute = ExecuteSettings.from_section(cfg.execute)
        if number_setting(ev, "evaluation.num_threads") < 0:
            raise ConfigError(f"evaluation.num_threads must be >= 0 (0 = torch's default), got {ev.num_threads}")
        job = cls(checkpoints=tuple(checkpoint_list(cfg)), settings=tuple(sweep_settings(cfg)), dataset=dataset,
                  rollout=rollout, execute=execute, results_root=results_root, restart=bool(ev.restart),
                  keep_step_maps=bool(ev.output_unmasking_history), num_threads=int(ev.num_threads),
                  config=plain(cfg))
        for setting in job.settings:
            try:
                job.rollout_for(setting)  # invalid settings fail before any model is loaded
            except ValueError as err:
                raise ConfigError(f"rollout: {err}") from None
        return job

    def rollout_for(self, setting):
        return self.rollout.with_decode(steps_per_block=setting.steps, strategy=setting.strategy,
                                        dynamic_threshold=setting.threshold)

    def config_yaml(self, setting=None, checkpoint_path=None):
        """The config of the whole run, or of one (checkpoint, setting) evaluation."""
        if setting is None:
            return snapshot_yaml(self.config)
        return snapshot_yaml(self.config, **{
            "rollout.denoising_steps_per_block": setting.steps, "rollout.remasking_strategy": setting.strategy,
            "rollout.dynamic_threshold": setting.threshold, "evaluation.checkpoint_path": checkpoint_path,
            "sweep.checkpoints": None})


# ------------------------------------------------------------------------------- parsing the sweep section
def _number_list(value, key, cast):
    value = plain(value)
    if value is None:
        return None
    kinds = (int,) if cast is int else (int, float)
    if not isinstance(value, list) or not value or any(isinstance(v, bool) or not isinstance(v, kinds) for v in value):
        what = "integers (e.g. [4, 2, 1])" if cast is int else "numbers (e.g. [0.95, 0.9])"
        raise ConfigError(f"{key} must be a non-empty list of {what} or null, got {value!r}")
    return [cast(v) for v in value]


def sweep_settings(cfg):
    """The settings of this run, in config order, duplicates removed."""
    rollout_cfg = cfg.rollout
    strategy, tau = str(rollout_cfg.remasking_strategy), float(rollout_cfg.dynamic_threshold)
    steps = _number_list(cfg.sweep.denoising_steps, "sweep.denoising_steps", int)
    thresholds = _number_list(cfg.sweep.dynamic_thresholds, "sweep.dynamic_thresholds", float) or []
    if steps is not None and any(not 1 <= s <= int(rollout_cfg.block_size) for s in steps):
        raise ConfigError(f"sweep.denoising_steps must lie in [1, rollout.block_size={rollout_cfg.block_size}], got {steps}")
    if any(not 0 < t <= 1 for t in thresholds):
        raise ConfigError(f"sweep.dynamic_thresholds must lie in (0, 1], got {thresholds}")
    out = [Setting(s, strategy, tau) for s in (steps or [int(rollout_cfg.denoising_steps_per_block)])]
    # The dynamic rule unmasks at least the static schedule's count, so S = B means "one or more per step".
    out += [Setting(int(rollout_cfg.block_size), DYNAMIC, t, "threshold") for t in thresholds]
    return list(dict.fromkeys(out))


def _label_of(path):
    name = Path(str(path).rstrip("/")).name or str(path)
    return re.sub(r"[^\w.+=-]", "_", name)


def checkpoint_list(cfg):
    """[(label, path)] from sweep.checkpoints, else evaluation.checkpoint_path (a string or a list)."""
    spec = plain(cfg.sweep.checkpoints)
    key = "sweep.checkpoints"
    if spec is None:
        spec, key = plain(cfg.evaluation.checkpoint_path), "evaluation.checkpoint_path"
    entries = []
    if isinstance(spec, dict):
        entries = [(str(label), path) for label, path in spec.items()]
    elif isinstance(spec, (list, str)) or spec is None:
        for entry in spec if isinstance(spec, list) else [spec]:
            if isinstance(entry, dict) and set(entry) == {"label", "path"}:
                entries.append((str(entry["label"]), entry["path"]))
            elif isinstance(entry, str) and "=" in entry:
                label, path = entry.split("=", 1)
                entries.append((label.strip(), path.strip()))
            elif isinstance(entry, str) or entry is None:
                entries.append((None, entry))
            else:
                raise ConfigError(f"{key}: entry {entry!r} is not a path, 'label=path' or {{label:, path:}}")
    else:
        raise ConfigError(f"{key} must be a path, a list of paths or a mapping label -> path, got {spec!r}")
    if not entries:
        raise ConfigError(f"{key} is empty")
    for label, path in entries:  # an empty path would silently evaluate the embedded default
        check_checkpoint_path(path, f"{key}" + (f" entry '{label}'" if label else ""))
    out = [(_label_of(label if label else path), path) for label, path in entries]
    labels = [label for label, _ in out]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ConfigError(f"{key}: several checkpoints are named {duplicates[0]!r}; label them "
                          f"(sweep.checkpoints=[base=path1,t3d=path2])")
    return out
