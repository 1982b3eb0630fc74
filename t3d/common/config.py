"""`script.py config=path.yaml a.b=value ...`: OmegaConf merge with the YAML as the schema.

Every key given on the command line must exist in the YAML (typos are errors that name the nearest
valid key), values keep the YAML's type (ints are accepted for floats; a null default accepts
anything), and `???` values are required. The resolved config is saved beside every output.
"""
import difflib
import os
import re
import sys
from pathlib import Path

from omegaconf import OmegaConf

from t3d.common.errors import ConfigError
from t3d.common.io import atomic_write_text


def _flat_keys(tree, prefix=""):
    """Plain nested dict -> {"a.b": value} for every node (mappings included)."""
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        out[path] = value
        if isinstance(value, dict):
            out.update(_flat_keys(value, path + "."))
    return out


def _type_ok(default, value):
    if default is None or value is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, (int, str)):
        return isinstance(value, type(default))
    if isinstance(default, (list, dict)):
        return isinstance(value, type(default))
    return True


def _type_name(v):
    return {list: "list", dict: "mapping"}.get(type(v), type(v).__name__)


HELP_FLAGS = ("--help", "-h")
_YAML_LINE = re.compile(r"^(?P<indent> *)(?P<key>[\w.-]+):(?P<value>[^#]*?)\s*(?P<comment>#.*)?$")


def read_yaml(path):
    """A config file as an OmegaConf mapping; one-line ConfigError for text that is not UTF-8, not YAML, or
    not a mapping of sections."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        path.read_text(encoding="utf-8")  # OmegaConf's own loader reads 1e-5 as a float (PyYAML alone would not)
        config = OmegaConf.load(path)
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1} col {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where} ({getattr(err, 'problem', None) or 'parse error'})") from None
    except (ValueError, TypeError, OSError) as err:  # e.g. a top-level scalar ("Invalid loaded object type")
        raise ConfigError(f"{path}: expected a mapping of config sections ({str(err).splitlines()[0]})") from None
    if OmegaConf.is_dict(config) and not config:
        raise ConfigError(f"{path}: the config is empty")
    if not OmegaConf.is_dict(config):
        raise ConfigError(f"{path}: expected a mapping of config sections, got {type(config).__name__}")
    return config


def help_text(config_path=None, script=None):
    """Usage plus every key of the YAML as a dotted `key=default  # comment` line (YAML comments kept)."""
    script = script or os.path.basename(sys.argv[0]) or "script.py"
    lines = [f"usage: {script} config=path.yaml [key=value ...]",
             "",
             "Merges the YAML with dotted overrides (e.g. rollout.temperature=0.5); an unknown key, a missing",
             "required key or a value of the wrong type is an error. -h, --help: this text."]
    if config_path is None:
        return "\n".join(lines + ["", "Pass config=<file> with --help to list that config's keys."]) + "\n"
    path = Path(config_path)
    read_yaml(path)  # a bad file is one line here too
    lines += ["", f"keys of {path} (defaults; `???` = required):"]
    stack = []  # (indent, key) of the enclosing mappings
    for raw in path.read_text(encoding="utf-8").splitlines():
        match = _YAML_LINE.match(raw)
        if not match:
            comment = raw.strip()
            if comment.startswith("#") and stack:  # a continued comment of the key above
                lines.append(" " * 49 + comment)  # under the comment above
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        value, comment = match["value"].strip(), match["comment"] or ""
        if not value:  # a section
            lines.append(f"  {'.'.join(k for _, k in stack)}:{'  ' + comment if comment else ''}")
            continue
        entry = f"  {'.'.join(k for _, k in stack)}={value}"
        lines.append(f"{entry:<48} {comment}".rstrip())
    return "\n".join(lines) + "\n"


def exit_if_help(argv=None, default_config=None):
    """`--help`/`-h` anywhere in argv: print help for config= (if given) or the script's default config, exit 0."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not any(arg in HELP_FLAGS for arg in argv):
        return
    given = [arg.split("=", 1)[1] for arg in argv if arg.startswith("config=")]
    try:
        text = help_text(given[-1] if given else default_config)
    except ConfigError as err:  # config=<missing file> --help
        print(f"{os.path.basename(sys.argv[0]) or 't3d'}: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(text, end="")
    sys.exit(0)


def load_config(argv=None, default_config=None):
    """Parse `config=<yaml>` plus dotted overrides from argv (default sys.argv[1:]); `--help` prints
    help_text (for `default_config` when no config= is given) and exits 0."""
    argv = sys.argv[1:] if argv is None else list(argv)
    exit_if_help(argv, default_config)
    bad = [arg for arg in argv if "=" not in arg]
    if bad:
        raise ConfigError(f"argument '{bad[0]}' is not key=value (usage: config=path.yaml key=value ...; --help lists the keys)")
    try:
        cli = OmegaConf.from_dotlist(argv)
    except Exception as err:  # e.g. an unbalanced [ in a list value
        raise ConfigError(f"cannot parse the command line: {str(err).splitlines()[0]}") from None
    if "config" not in cli:
        raise ConfigError("missing config=<path.yaml> on the command line")
    path = Path(str(cli.config))
    base = read_yaml(path)
    schema = _flat_keys(OmegaConf.to_container(base, resolve=False))
    for key, value in _flat_keys(OmegaConf.to_container(cli, resolve=False)).items():
        if key == "config" or isinstance(value, dict):
            continue
        parents = [key.rsplit(".", n)[0] for n in range(1, key.count(".") + 1)]
        if key not in schema and any(schema.get(p, "") is None for p in parents):
            continue  # a null default accepts any value, mappings included
        if key not in schema:
            near = difflib.get_close_matches(key, list(schema), n=1, cutoff=0.5)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise ConfigError(f"unknown config key '{key}' (not in {path}){hint}")
        default = schema[key]
        if isinstance(default, str) and (default == "???" or default.startswith("${")):
            continue  # required or interpolated: any type
        if not _type_ok(default, value):
            raise ConfigError(
                f"config key '{key}' expects {_type_name(default)} (default {default!r}), got {_type_name(value)} {value!r}"
            )
    cfg = OmegaConf.merge(base, cli)
    for key, value in _flat_keys(OmegaConf.to_container(cfg, resolve=False)).items():
        if value == "???":
            raise ConfigError(f"required config key '{key}' is missing: pass {key}=... or set it in {path}")
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except Exception as err:  # broken ${...} interpolation
        raise ConfigError(f"{path}: config interpolation failed: {str(err).splitlines()[0]}") from None
    return cfg


def save_config(cfg, directory, name="config.yaml"):
    """Write the resolved config beside an output, atomically."""
    return atomic_write_text(Path(directory) / name, OmegaConf.to_yaml(cfg, resolve=True))


def flatten(cfg):
    """Dotted (key, value) pairs of the resolved config, e.g. for experiment trackers."""
    return {k: v for k, v in _flat_keys(OmegaConf.to_container(cfg, resolve=True)).items() if not isinstance(v, dict)}
