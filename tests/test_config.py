import pytest
from omegaconf import OmegaConf

from t3d.common.config import ConfigError, flatten, help_text, load_config, save_config

YAML = """
optimizer:
  params:
    learning_rate: 1e-5
    warmup: 20
lr_scheduler:
  learning_rate: ${optimizer.params.learning_rate}
model:
  path: ???
  extra: null
flags:
  bf16: true
  ratios: [1.0, 0.5]
"""


@pytest.fixture
def cfg_path(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(YAML)
    return f"config={path}"


def test_overrides_merge_and_interpolations_follow(cfg_path):
    cfg = load_config([cfg_path, "model.path=x", "optimizer.params.learning_rate=3e-4", "flags.ratios=[1.0]",
                       "optimizer.params.warmup=5", "model.extra={a: 1}"])
    assert cfg.lr_scheduler.learning_rate == 3e-4 and cfg.optimizer.params.warmup == 5
    assert list(cfg.flags.ratios) == [1.0] and cfg.model.extra.a == 1


@pytest.mark.parametrize("override, message", [
    ("optimizer.params.learnig_rate=1", "unknown config key 'optimizer.params.learnig_rate' (not in "),
    ("optimizer.params.warmup=abc", "config key 'optimizer.params.warmup' expects int (default 20), got str 'abc'"),
    ("flags.bf16=1", "config key 'flags.bf16' expects bool"),
    ("flags.ratios=0.5", "config key 'flags.ratios' expects list"),
])
def test_bad_keys_and_types_are_one_line_errors(cfg_path, override, message):
    with pytest.raises(ConfigError) as err:
        load_config([cfg_path, "model.path=x", override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_nearest_key_is_suggested_and_required_keys_enforced(cfg_path):
    with pytest.raises(ConfigError, match="did you mean 'optimizer.params.learning_rate'"):
        load_config([cfg_path, "model.path=x", "optimizer.params.learnig_rate=1"])
    with pytest.raises(ConfigError, match="required config key 'model.path' is missing"):
        load_config([cfg_path])
    with pytest.raises(ConfigError, match="missing config=<path.yaml>"):
        load_config(["model.path=x"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(["config=/nonexistent.yaml"])


def test_float_default_accepts_int_and_saved_config_round_trips(cfg_path, tmp_path):
    cfg = load_config([cfg_path, "model.path=x", "optimizer.params.learning_rate=1"])
    out = save_config(cfg, tmp_path / "run")
    saved = OmegaConf.load(out)
    assert saved.lr_scheduler.learning_rate == 1 and saved.model.path == "x"
    assert flatten(cfg)["flags.ratios"] == [1.0, 0.5]


def test_help_lists_dotted_keys_with_their_comments_and_exits_0(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["s.py"])
    path = tmp_path / "h.yaml"
    path.write_text("# header comment\nrun:\n  steps: 4      # steps per block\n                 # (at most block_size)\n"
                    "  name: \"x\"\nseed: ???\n")
    with pytest.raises(SystemExit) as exit_:
        load_config([f"config={path}", "--help"])
    assert exit_.value.code == 0
    shown = capsys.readouterr().out.splitlines()
    assert shown[shown.index(f"keys of {path} (defaults; `???` = required):") + 1:] == [
        "  run:",
        "  run.steps=4" + " " * 36 + "# steps per block",
        " " * 49 + "# (at most block_size)",
        '  run.name="x"',
        "  seed=???",
    ]
    out = help_text(path, "s.py")
    assert out.splitlines()[0] == "usage: s.py config=path.yaml [key=value ...]"
    assert out == "".join(line + "\n" for line in shown)  # the same text, for entry scripts and trainers


def test_an_argument_that_is_not_key_value_is_named(cfg_path):
    with pytest.raises(ConfigError, match=r"^argument 'verbose' is not key=value \(usage: config=path.yaml"):
        load_config([cfg_path, "model.path=x", "verbose"])
