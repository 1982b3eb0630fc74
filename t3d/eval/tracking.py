"""Evaluation results to W&B, when the environment turns W&B on (WANDB_MODE=offline or online; the commands
default it to disabled when unset). Metric names are namespaced eval/...; the run goes to WANDB_PROJECT, else the
experiment's project, and its files under the project folder."""
import os

COLUMNS = ("checkpoint", "dataset", "setting", "accuracy", "mean_nfe", "tokens_per_forward",
           "tokens_per_forward_no_prefill", "items")


def wandb_enabled():
    return os.environ.get("WANDB_MODE", "disabled") != "disabled"


def log_eval(rows, scores, project, directory, plot=None):
    """One W&B run per eval command: a table of every (checkpoint, setting) row, per-row summary metrics
    (eval/<checkpoint>/<setting>/accuracy, ...), the AUP table and the sweep plot."""
    import wandb

    run = wandb.init(project=os.environ.get("WANDB_PROJECT") or project, dir=str(directory), job_type="eval",
                     config={"rows": len(rows)})
    try:
        run.log({"eval/results": wandb.Table(columns=list(COLUMNS), data=[[r.get(c) for c in COLUMNS] for r in rows])})
        for r in rows:
            for key in ("accuracy", "mean_nfe", "tokens_per_forward"):
                run.summary[f"eval/{r['checkpoint']}/{r['setting']}/{key}"] = r[key]
        if scores:
            run.log({"eval/aup": wandb.Table(columns=["method", "aup", "points_used", "points"],
                                             data=[[s["method"], s["aup"], s["points_used"], s["points"]] for s in scores])})
        if plot is not None and plot.is_file():
            run.log({"eval/sweep": wandb.Image(str(plot))})
    finally:
        run.finish()
