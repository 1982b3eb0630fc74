"""Export a checkpoint for sharing: a standalone copy with a model card, optionally pushed to the hub.

    t3d-export experiments/t3d_tiny/ckpt/optimized exported/t3d-tiny \
        --eval eval/results/sweep-.../sweep.json --push-to-hub your-name/t3d-tiny

The copy holds the weights, tokenizer, SDAR code (so it loads with trust_remote_code anywhere) and a README.md
model card: base model, training data and T3D settings (from the checkpoint's config.yaml) and, when given,
the evaluation table. Pushing goes through huggingface_hub (HF_TOKEN or `huggingface-cli login`).
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

from t3d.common.errors import DataError, error_line
from t3d.common.io import atomic_write_text
from t3d.model.checkpoint import ADAPTER_CONFIG, base_as_recorded, check_checkpoint, hub_id, is_adapter
from t3d.model.export import make_standalone

SKIPPED = ("config.yaml", "README.md")  # the run's own config is summarised in the card, not shipped as is
TRAINING_KEYS = ("num_train_epochs", "batch_size_lm", "gradient_accumulation_steps", "mixed_precision", "beta",
                 "alpha", "lambda_ddo", "lambda_path", "path_k_steps", "mask_strategy", "multi_round",
                 "round_interval", "block_size", "seed")


def _run_config(directory):
    path = Path(directory) / "config.yaml"
    if not path.is_file():
        return {}
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def eval_rows(paths):
    """Rows (checkpoint, setting, accuracy, tokens/forward, mean NFE) from eval metrics.json or sweep.json files."""
    rows = []
    for path in map(Path, paths):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: not valid JSON at line {err.lineno} col {err.colno}") from None
        for row in data["rows"] if isinstance(data, dict) and "rows" in data else [data]:
            if "accuracy" not in row:
                raise DataError(f"{path}: not an eval metrics.json or sweep.json (no accuracy)")
            rows.append((row.get("checkpoint", "?"), row.get("dataset", "?"), row.get("setting", "?"),
                         row["accuracy"], row.get("tokens_per_forward"), row.get("mean_nfe")))
    return rows


def exported_base(directory):
    """The base an exported copy of adapter directory `directory` records: its own, except that a base recorded
    relative to the adapter (training does so when the base lies in the run's output_dir, to move with it)
    becomes that folder's absolute path: beside the copy it would name nothing."""
    base, beside = base_as_recorded(directory)
    return str(beside.resolve()) if beside is not None and beside.is_dir() else base


def model_card(directory, eval_paths=()):
    """README.md text for a checkpoint directory."""
    config = _run_config(directory)
    model, training, dataset = config.get("model", {}), config.get("training", {}), config.get("dataset", {})
    adapter = is_adapter(directory)
    base = model.get("pretrained_model")
    if adapter:
        base = exported_base(directory) or base
    base_id = hub_id(base)
    front = ["---", "library_name: " + ("peft" if adapter else "transformers"),
             "tags: [t3d, sdar, block-diffusion, diffusion-language-model]"]
    if base_id:
        front.append(f"base_model: {base_id}")
    front.append("---")
    method = "T3D (trajectory self-distillation with DDO)" if "lambda_ddo" in training else "block-diffusion SFT"
    lines = [*front, "", f"# {Path(directory).name}", "",
             f"A block-diffusion SDAR model trained with {method} using the t3d toolkit.", ""]
    if base:
        lines += [f"- Base model: `{base}`"]
    if dataset.get("optimization_data"):
        lines += [f"- Training data: `{Path(str(dataset['optimization_data'])).name}`"]
    if adapter:
        lines += ["- A LoRA adapter (PEFT): load it with `AutoPeftModelForCausalLM` or any t3d stage."]
    if training:
        lines += ["", "## Training settings", "", "| key | value |", "|---|---|"]
        lines += [f"| training.{k} | {training[k]} |" for k in TRAINING_KEYS if k in training]
    rows = eval_rows(eval_paths)
    if rows:
        lines += ["", "## Evaluation", "", "| checkpoint | dataset | setting | accuracy | tokens per forward | mean NFE |",
                  "|---|---|---|---:|---:|---:|"]
        lines += [f"| {c} | {d} | {s} | {a:.4f} | {t if t is None else f'{t:.2f}'} | {n if n is None else f'{n:.1f}'} |"
                  for c, d, s, a, t, n in rows]
    lines += ["", "## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
              'model = AutoModelForCausalLM.from_pretrained("<this repo>", trust_remote_code=True)',
              'tokenizer = AutoTokenizer.from_pretrained("<this repo>")',
              "# with t3d installed: block-diffusion decoding, few steps per block",
              'out = model.diffusion_generate(["Compute 47+38."], tokenizer=tokenizer, steps_per_block=1)',
              "print(out.texts[0])", "```", ""]
    return "\n".join(lines)


def export(checkpoint, out, eval_paths=()):
    """Copy a checkpoint into `out` (which must not exist) as a standalone model with a model card."""
    checkpoint, out = Path(checkpoint), Path(out)
    check_checkpoint(checkpoint)
    if out.exists():
        raise DataError(f"{out}: already exists (export writes a new folder)")
    card = model_card(checkpoint, eval_paths)  # before copying: a bad --eval file leaves nothing behind
    tmp = out.parent / f".tmp-{out.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(checkpoint, tmp, ignore=shutil.ignore_patterns(*SKIPPED, ".*"))
    if is_adapter(tmp):
        config, base = json.loads((tmp / ADAPTER_CONFIG).read_text()), exported_base(checkpoint)
        if base != config.get("base_model_name_or_path"):
            config["base_model_name_or_path"] = base
            atomic_write_text(tmp / ADAPTER_CONFIG, json.dumps(config, indent=2, sort_keys=True) + "\n")
    make_standalone(tmp)
    atomic_write_text(tmp / "README.md", card)
    tmp.rename(out)
    return out


def push_to_hub(folder, repo_id, private=False, token=None):
    """Create the repo if needed and upload the folder; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    return api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload from t3d-export")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="a checkpoint directory written by a t3d trainer")
    parser.add_argument("out", help="the new folder to write")
    parser.add_argument("--eval", action="append", default=[], help="an eval metrics.json or sweep.json for the card")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO_ID", help="also upload to this hub repo")
    parser.add_argument("--private", action="store_true")
    args = parser.parse_args(argv)
    try:
        out = export(args.checkpoint, args.out, args.eval)
        print(f"wrote {out}")
        if args.push_to_hub:
            try:
                print(f"pushed: {push_to_hub(out, args.push_to_hub, private=args.private)}")
            except Exception as err:  # no network, no token, no permission: the export itself stands
                raise DataError(f"could not push {out} to {args.push_to_hub}: {error_line(err)}") from None
    except (DataError, OSError) as err:
        print(f"t3d-export: error: {error_line(err)}", file=sys.stderr)
        return 2
    return 0
