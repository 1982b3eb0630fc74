"""The package's layer order (t3d.LAYERS): no module imports from a layer above its own, and nothing outside
the package reaches into the import path."""
import ast
import subprocess
from pathlib import Path

import t3d

PACKAGE = Path(t3d.__file__).resolve().parent
ROOT = PACKAGE.parent


def layer_of(module):
    """Layer index of a dotted t3d module name (t3d.<sub>...)."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    for index, layer in enumerate(t3d.LAYERS):
        if parts[1] in (layer if isinstance(layer, tuple) else (layer,)):
            return index
    raise AssertionError(f"{module}: sub-package not in t3d.LAYERS")


def imports_of(path):
    """Every t3d module a file imports, function-level imports included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.startswith("t3d."))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("t3d"):
            if node.module == "t3d" or layer_of(node.module) is None:
                continue
            yield node.module


def test_layer_index_of_names():
    assert layer_of("t3d.common.io") == 0 and layer_of("t3d.model.sdar.modeling_sdar") == 2
    assert layer_of("t3d.train.loop") == layer_of("t3d.eval.grading") == 4
    assert layer_of("t3d.commands") == len(t3d.LAYERS) - 1


def test_no_module_imports_from_a_higher_layer_or_a_sibling_layer():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        own = layer_of(module)
        if own is None:
            continue
        own_sub = module.split(".")[1]
        for target in imports_of(path):
            theirs = layer_of(target)
            if theirs > own or (theirs == own and target.split(".")[1] != own_sub):
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_no_path_hacks_outside_the_entry_scripts():
    found = subprocess.run(["git", "grep", "-n", "-e", "sys.path.insert", "-e", "noqa: E402", "--", "*.py",
                            ":!tests/"], cwd=ROOT, capture_output=True, text=True).stdout
    assert found == ""


def test_every_package_folder_is_in_the_wheel():
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("__init__.py")}
    assert folders <= listed, sorted(folders - listed)
