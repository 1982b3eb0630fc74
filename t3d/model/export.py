"""Make a saved checkpoint directory a standalone Hugging Face model.

transformers knows `model_type: sdar` only once `t3d` is imported, so a checkpoint that is to load anywhere else
(`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`, `lm_eval --model hf`, SDAR's own tools)
carries the SDAR configuration and modeling code its config's `auto_map` names. Those two files import nothing
from t3d, so the copy is the toolkit's own model code.
"""
import json
import shutil
from pathlib import Path

from t3d.common.io import FILE_MODE, atomic_write_json

CODE_DIR = Path(__file__).resolve().parent / "sdar"
CODE_FILES = ("configuration_sdar.py", "modeling_sdar.py")
AUTO_MAP = {
    "AutoConfig": "configuration_sdar.SDARConfig",
    "AutoModel": "modeling_sdar.SDARModel",
    "AutoModelForCausalLM": "modeling_sdar.SDARForCausalLM",
}


def make_standalone(directory):
    """Copy the SDAR code into a model directory (one with config.json), point config.json's auto_map at it, drop
    a tokenizer auto_map that names code the directory does not hold (transformers' own tokenizer class, named
    by tokenizer_class, then loads it), and give every file the umask's permissions (readable by the group on a
    shared filesystem). Adapter directories (no config.json) are left alone: they load through their base."""
    directory = Path(directory)
    config_file = directory / "config.json"
    if not config_file.is_file():
        return
    for name in CODE_FILES:
        shutil.copyfile(CODE_DIR / name, directory / name)
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.get("auto_map") != AUTO_MAP:
        atomic_write_json(config_file, {**config, "auto_map": AUTO_MAP})
    tokenizer_file = directory / "tokenizer_config.json"
    if tokenizer_file.is_file():
        tok = json.loads(tokenizer_file.read_text(encoding="utf-8"))
        names = [n for n in (tok.get("auto_map") or {}).get("AutoTokenizer") or [] if n]
        if names and not all((directory / f"{n.split('.')[0]}.py").is_file() for n in names):
            tok.pop("auto_map")
            atomic_write_json(tokenizer_file, tok)
    for path in directory.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(FILE_MODE)
