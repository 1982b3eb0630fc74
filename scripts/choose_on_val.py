"""Choose each method's learning rate and stopping epoch on val, and draw the learning curves.

Reads the report of a tuning experiment (scripts/run_experiment.py with `curve_steps`, evaluated on val; e.g.
configs/experiments/tune_chain_v3.yaml) and every run's metrics.jsonl, and writes beside the report:
  choice.json / choice.md   every candidate's val numbers, the rule, and each method family's choice
  curves_val.png            val accuracy at S=B, S=2 and S=1 after every epoch (epoch 0 = the base)
  curves_train.png          the training terms per optimizer step (loss, path loss, DDO terms, discriminator
                            accuracy, DDO's share of the gradient)

    python scripts/choose_on_val.py --experiment configs/experiments/tune_chain_v3.yaml

The rule: among a family's candidates (learning rate x epoch) whose S=B val accuracy is at most 1 point below the
base's, the highest val AUP of the better decoder (static or dynamic); when none keeps S=B, the candidate with the
best S=B accuracy (flagged). A family is a method name up to `_lr` (t3d_lr1e-3 -> t3d).
"""
import argparse
import json
import re
import sys

import run_experiment as rx

DYNAMIC = rx.DYNAMIC
TOLERANCE = rx.FULL_STEP_TOLERANCE
TRAIN_TERMS = ("loss", "path", "ddo_real", "ddo_fake", "disc_acc", "ddo_grad_share")


def rule(full):
    return (f"the highest val AUP of the better decoder among candidates whose {full} val accuracy is at most 1 point "
            f"below the base's; when none is, the best {full} accuracy")


def candidate_of(group, steps_per_epoch, epochs):
    """'t3d_lr1e-3_step32' -> ('t3d', 'lr1e-3', 1); 't3d_lr1e-3' (the final checkpoint) -> (.., epochs)."""
    method = group.removesuffix(DYNAMIC)
    match = re.fullmatch(r"(.+?)_(lr[^_]+)(?:_step(\d+))?", method)
    if not match:
        return None
    family, lr, step = match.groups()
    epoch = int(step) // steps_per_epoch if step else epochs
    return family, lr, epoch


def candidates(summary, base_full, block_size, curve_steps, epochs):
    """{(family, lr, epoch): {group, accuracy {setting: val accuracy}, full_step, aup_static, aup_dynamic, decoder
    (the better one), score (its AUP), kept (S=B within 1 point of the base)}}. The first curve step is one epoch."""
    per_epoch = min(curve_steps) if curve_steps else None
    full = f"S={block_size}"
    out = {}
    for group, s in summary.items():
        if group.endswith(DYNAMIC) or group == "base":
            continue
        key = candidate_of(group, per_epoch or 1, epochs)
        if key is None:
            continue
        dynamic = summary.get(group + DYNAMIC, {})
        acc = {k: v["accuracy_mean"] for k, v in s["by_setting"].items()}
        aups = {"static": s["aup_mean"], "dynamic": dynamic.get("aup_mean")}
        better = max((d for d in aups if aups[d] is not None), key=lambda d: aups[d], default=None)
        out[key] = {"group": group, "accuracy": acc, "full_step": acc.get(full), "aup_static": aups["static"],
                    "aup_dynamic": aups["dynamic"], "decoder": better, "score": aups[better] if better else None,
                    "kept": acc.get(full) is not None and acc[full] - base_full >= -TOLERANCE - 1e-9}
    return out


def choose(cands):
    """{family: the chosen candidate's lr, epoch, group, numbers, and whether any candidate kept S=B} by `rule`."""
    out = {}
    for family in dict.fromkeys(k[0] for k in cands):
        mine = {k: v for k, v in cands.items() if k[0] == family}
        kept = {k: v for k, v in mine.items() if v["kept"] and v["score"] is not None}
        if kept:
            key = max(kept, key=lambda k: (kept[k]["score"], kept[k]["full_step"]))
        else:
            key = max(mine, key=lambda k: (mine[k]["full_step"] or 0.0))
        out[family] = {"lr": key[1], "epoch": key[2], "group": mine[key]["group"], "kept_full_step": bool(kept),
                       **{k: mine[key][k] for k in ("full_step", "aup_static", "aup_dynamic", "decoder", "score")}}
    return out


def markdown(cands, chosen, base, block_size, steps):
    full = f"S={block_size}"
    lines = [f"Base on val: {full} {100 * base['by_setting'][full]['accuracy_mean']:.1f}%, static AUP "
             f"{base['aup_mean']:.1f}" + (f", dynamic AUP {base['aup_dynamic']:.1f}" if base.get("aup_dynamic") else "")
             + ".", "",
             "| family | lr | epoch | " + " | ".join(f"S={s} %" for s in steps) + " | AUP static | AUP dynamic | "
             f"{full} kept | chosen |", "|---|---|---:|" + "---:|" * (len(steps) + 4)]
    for (family, lr, epoch), c in sorted(cands.items(), key=lambda kv: (kv[0][0], float(kv[0][1][2:]), kv[0][2])):
        accs = " | ".join("–" if c["accuracy"].get(f"S={s}") is None else f"{100 * c['accuracy'][f'S={s}']:.1f}"
                          for s in steps)
        pick = chosen[family]["lr"] == lr and chosen[family]["epoch"] == epoch
        aup = [("–" if v is None else f"{v:.1f}") for v in (c["aup_static"], c["aup_dynamic"])]
        lines.append(f"| {family} | {lr[2:]} | {epoch} | {accs} | {aup[0]} | {aup[1]} | "
                     f"{'yes' if c['kept'] else 'no'} | {'**chosen**' if pick else ''} |")
    lines += ["", f"Chosen (rule: {rule(full)}):", ""]
    for family, c in chosen.items():
        note = "" if c["kept_full_step"] else f" (no candidate kept {full}: the best {full} accuracy instead)"
        lines.append(f"- {family}: lr {c['lr'][2:]}, {c['epoch']} epoch(s), val AUP {c['score']:.1f} "
                     f"({c['decoder']} decoder), {full} {100 * c['full_step']:.1f}%{note}")
    return "\n".join(lines) + "\n"


def plot_curves(cands, base, out_dir, block_size, runs, families):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from t3d.common.io import atomic_save_figure

    colors = dict(zip(families, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    styles = {}
    settings = [f"S={block_size}", "S=2", "S=1"]
    fig, axes = plt.subplots(1, len(settings), figsize=(5 * len(settings), 4), sharex=True)
    for ax, setting in zip(axes, settings):
        for family, lr in dict.fromkeys((k[0], k[1]) for k in cands):
            pts = sorted((k[2], v["accuracy"].get(setting)) for k, v in cands.items() if k[:2] == (family, lr))
            xs = [0] + [e for e, _ in pts]
            ys = [100 * base["by_setting"][setting]["accuracy_mean"]] + [100 * (a or 0.0) for _, a in pts]
            ls = styles.setdefault(lr, ("-", "--", ":", "-.")[len(styles) % 4])
            ax.plot(xs, ys, ls, marker="o", color=colors[family], label=f"{family} {lr[2:]}")
        ax.set_title(f"val accuracy at {setting}")
        ax.set_xlabel("epoch (0 = base)")
        ax.set_ylabel("%")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    atomic_save_figure(fig, out_dir / "curves_val.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(2, 3, figsize=(15, 8), sharex=True)
    for ax, term in zip(axes.flat, TRAIN_TERMS):
        for (family, lr), records in runs.items():
            xs = [r["step"] for r in records if r.get(term) is not None]
            if xs:
                ax.plot(xs, [r[term] for r in records if r.get(term) is not None], styles.get(lr, "-"),
                        color=colors[family], linewidth=1, label=f"{family} {lr[2:]}")
        ax.set_title(term)
        ax.set_xlabel("optimizer step")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    atomic_save_figure(fig, out_dir / "curves_train.png", dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiment", required=True, help="the tuning experiment (configs/experiments/tune_*.yaml)")
    args = p.parse_args(argv)
    exp = rx.load_experiment(args.experiment)
    from t3d.common.io import atomic_write_json, atomic_write_text, read_records

    results = rx._path(exp["results"])
    report = json.loads((results / "results.json").read_text(encoding="utf-8"))
    summary, block_size = report["aup_summary"], int(exp["block_size"])
    epochs = int(exp["train_overrides"].get("training.num_train_epochs", 1))
    steps = report["setup"]["steps"]
    base = dict(summary["base"], aup_dynamic=summary.get("base" + DYNAMIC, {}).get("aup_mean"))
    base_full = base["by_setting"][f"S={block_size}"]["accuracy_mean"]
    cands = candidates(summary, base_full, block_size, exp["curve_steps"], epochs)
    if not cands:
        sys.exit(f"choose_on_val: {results / 'results.json'} has no <family>_lr<x> methods")
    chosen = choose(cands)
    out = rx._path(exp["out"])
    runs = {}
    for method in exp["methods"]:
        key = candidate_of(method, 1, epochs)
        path = out / f"{method}_seed0" / "metrics.jsonl"
        if key and path.exists():
            runs[key[:2]] = read_records(path)
    families = list(dict.fromkeys(k[0] for k in cands))
    plot_curves(cands, base, results, block_size, runs, families)
    atomic_write_json(results / "choice.json", {
        "rule": rule(f"S={block_size}"),
        "base": {"full_step": base_full, "aup_static": base["aup_mean"], "aup_dynamic": base["aup_dynamic"]},
        "candidates": [{"family": k[0], "lr": k[1], "epoch": k[2], **v} for k, v in cands.items()],
        "chosen": chosen})
    text = markdown(cands, chosen, base, block_size, steps)
    atomic_write_text(results / "choice.md", text)
    print(text)


if __name__ == "__main__":
    main()
