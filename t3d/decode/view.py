"""See a trajectory: the order in which the decoder unmasked one response's tokens.

    t3d-view sdar_sample/temp_data/outputs-eval-sdar-tiny-synthetic_math_train.json --item 3
    t3d-view eval/results/<...>/items.jsonl --item 0 --html trajectory.html

Reads a rollout file (one item per question, a list per replica) or an eval `items.jsonl` (one line per
response). Every token is coloured by when its block unmasked it (first step of the block: blue, last: red);
`|` marks block boundaries, which sit at absolute positions, so the response's first block also holds the
end of the prompt; a newline token shows as ⏎ (a carriage return as ␍), so every token stays visible and each
block on one line. The HTML page adds a slider that replays the decode step by step.
"""
import argparse
import html
import sys
from pathlib import Path

from t3d.common.errors import DataError
from t3d.common.io import read_records

PALETTE = (21, 27, 33, 39, 45, 49, 48, 82, 118, 154, 190, 226, 220, 214, 208, 202, 196)  # ANSI 256: blue -> red


def load_trajectory(path, item=0, replica=0):
    """{"prompt", "response_ids", "step_map", "block_size", "source"} of one response in a rollout file or an
    eval items.jsonl; a one-line DataError naming the file when it holds no such response."""
    records = read_records(path)
    rows = [r for r in records if r.get("replica", 0) == replica] if records and "index" in records[0] else records
    if not 0 <= item < len(rows):
        raise DataError(f"{path}: no item {item} (it holds {len(rows)})")
    row = rows[item]
    ids, steps = row.get("response_ids"), row.get("step_map")
    if ids and isinstance(ids[0], list):  # a rollout item: one list per replica
        if not 0 <= replica < len(ids):
            raise DataError(f"{path}: item {item} has no replica {replica} (it has {len(ids)})")
        ids, steps = ids[replica], steps[replica]
    if not ids or not steps or len(ids) != len(steps):
        raise DataError(f"{path}: item {item} has no token ids with a step_map of the same length "
                        "(eval results written before token ids were recorded: rerun the evaluation)")
    block = row.get("block_size")
    if block is None:
        raise DataError(f"{path}: item {item} does not record its block_size")
    return {"prompt": row.get("prompt", ""), "response_ids": ids, "step_map": steps, "block_size": int(block),
            "source": f"{path} item {item} replica {replica}"}


def segments(trajectory, tokenizer):
    """[(block index, [(token text, step, shade in [0, 1])...])]: shade = rank of the token's step among the
    steps of its block (0 = unmasked first)."""
    from t3d.tasks.prompting import encode_prompt

    offset = len(encode_prompt(tokenizer, trajectory["prompt"])) if trajectory["prompt"] else 0
    size = trajectory["block_size"]
    blocks = {}
    for i, (token, step) in enumerate(zip(trajectory["response_ids"], trajectory["step_map"])):
        text = tokenizer.convert_tokens_to_string(tokenizer.convert_ids_to_tokens([token]))
        blocks.setdefault((offset + i) // size, []).append((text, int(step)))
    out = []
    for index in sorted(blocks):
        distinct = sorted({s for _, s in blocks[index]})
        last = max(len(distinct) - 1, 1)
        out.append((index, [(t, s, distinct.index(s) / last) for t, s in blocks[index]]))
    return out


def shown(text):
    """A token's text as both views show it: line breaks as visible marks. A raw newline would be an invisible
    token, and in the HTML page it breaks its block's box over two lines."""
    return text.replace("\r", "␍").replace("\n", "⏎")


def render_terminal(trajectory, tokenizer):
    parts = []
    for _, tokens in segments(trajectory, tokenizer):
        for text, _, shade in tokens:
            colour = PALETTE[round(shade * (len(PALETTE) - 1))]
            parts.append(f"\x1b[38;5;{colour}m{shown(text)}\x1b[0m")
        parts.append("\x1b[2m|\x1b[0m")
    legend = " ".join(f"\x1b[38;5;{c}m■\x1b[0m" for c in PALETTE[::4])
    return f"{trajectory['source']}\nfirst {legend} last step of its block\n" + "".join(parts)


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: monospace; margin: 2em; }}
.block {{ border: 1px solid #999; padding: 2px; margin: 1px; display: inline-block; }}
.tok {{ white-space: pre; padding: 0 1px; }}
.masked {{ color: #bbb !important; background: #eee; }}
</style></head><body>
<h1>{title}</h1>
<p>Colour: when the token's block unmasked it (blue first, red last); ⏎ is a newline.
Step <span id="now">{last}</span> of {last}.</p>
<input id="step" type="range" min="0" max="{last}" value="{last}" aria-label="decoding step">
<div id="response">{blocks}</div>
<script>
const slider = document.getElementById("step");
slider.addEventListener("input", () => {{
  const now = Number(slider.value);
  document.getElementById("now").textContent = now;
  for (const tok of document.querySelectorAll(".tok")) {{
    tok.classList.toggle("masked", Number(tok.dataset.step) > now);
  }}
}});
</script>
</body></html>
"""


def render_html(trajectory, tokenizer):
    blocks, last = [], max(trajectory["step_map"])
    for index, tokens in segments(trajectory, tokenizer):
        spans = "".join(
            f'<span class="tok" data-step="{step}" title="step {step}" '
            f'style="color: hsl({round(240 * (1 - shade))}, 80%, 40%)">{html.escape(shown(text)) or "&#8203;"}</span>'
            for text, step, shade in tokens)
        blocks.append(f'<span class="block" data-block="{index}">{spans}</span>')
    return PAGE.format(title=html.escape(trajectory["source"]), last=last, blocks="".join(blocks))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path", help="a rollout file or an eval items.jsonl")
    parser.add_argument("--item", type=int, default=0, help="which question (eval: which line of the replica)")
    parser.add_argument("--replica", type=int, default=0)
    parser.add_argument("--tokenizer", default=None, help="checkpoint whose tokenizer decodes the ids (default: the "
                        "one in the run's saved config, else the embedded default)")
    parser.add_argument("--html", default=None, help="also write the page here")
    args = parser.parse_args(argv)
    from t3d.common.io import atomic_write_text
    from t3d.model.checkpoint import load_tokenizer, resolve_checkpoint

    try:
        trajectory = load_trajectory(args.path, args.item, args.replica)
        tokenizer = load_tokenizer(resolve_checkpoint(args.tokenizer or _run_checkpoint(Path(args.path))))
        print(render_terminal(trajectory, tokenizer))
        if args.html:
            atomic_write_text(args.html, render_html(trajectory, tokenizer))
            print(f"wrote {args.html}")
    except (DataError, OSError) as err:
        from t3d.common.errors import error_line

        print(f"t3d-view: error: {error_line(err)}", file=sys.stderr)
        return 2
    return 0


def _run_checkpoint(path):
    """The checkpoint recorded in the config saved beside a rollout file or an eval result, if any."""
    for config in (path.with_name(path.stem + ".config.yaml"), path.with_name("config.yaml")):
        if config.is_file():
            from omegaconf import OmegaConf

            return OmegaConf.load(config).get("evaluation", {}).get("checkpoint_path")
    return None
