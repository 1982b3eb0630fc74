"""Shared benchmark plumbing: machine description, interleaved timing, medians, tables, results files,
random SDAR models of a stated shape, and peak-RSS measurement in a fresh subprocess.

Timing rule: the variants being compared run in the same process, interleaved round by round (and
in a rotated order each round), so a load spike from another job hits all of them alike and the
ratios of their medians stay meaningful on a noisy machine.
"""
import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from t3d.common.io import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]

RESULTS = ROOT / "benchmarks" / "results"
# One intra-op thread by default: on a 2-core machine shared with other jobs, 2 OpenMP threads spin-wait
# on each other whenever one is descheduled (measured 10-35x slower decoding); `--threads` overrides.
DEFAULT_THREADS = 1


def set_threads(n=DEFAULT_THREADS):
    """Fixed intra-op threads so numbers are comparable between runs (the CI machine has 2 cores)."""
    torch.set_num_threads(int(n))
    return torch.get_num_threads()


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(clock=None):
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    if clock:
        info["clock"] = clock
    if hasattr(os, "getloadavg"):
        info["load_avg_1m_at_start"] = round(os.getloadavg()[0], 2)  # other jobs on the machine
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def machine_line(info):
    line = f"{info['date']} · {info['cpu']} ({info['cores']} cores) · torch {info['torch']} · {info['threads']} threads"
    if "clock" in info:
        line += f" · {info['clock']} time"
    if "gpu" in info:
        line += f" · {info['gpu']}"
    return line


CLOCKS = ("cpu", "wall")


def default_clock(threads):
    """With one thread, process CPU time is the work itself: time spent waiting for a core that another job
    holds is not counted, so numbers hold on a shared machine. With more threads CPU time sums over threads
    and wall time is the honest measure."""
    return "cpu" if threads == 1 else "wall"


def timed(fn, clock="wall"):
    """(seconds on `clock`, wall seconds, result) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return (cpu if clock == "cpu" else wall), wall, result


def interleaved(variants, repeats, warmup=1, clock="wall"):
    """Time each zero-argument callable in `variants` (name -> fn) `repeats` times, round-robin.

    Each round runs every variant once, starting at a rotated position. Returns name -> list of seconds
    on `clock`, name -> list of wall seconds, and name -> the last result. Warm-up rounds are not recorded.
    """
    names = list(variants)
    times, walls = {n: [] for n in names}, {n: [] for n in names}
    results = {}
    for r in range(warmup + repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            seconds, wall, results[name] = timed(variants[name], clock)
            if r >= warmup:
                times[name].append(seconds)
                walls[name].append(wall)
    return times, walls, results


def add_common_args(parser, repeats):
    parser.add_argument("--repeats", type=int, default=repeats, help="timed rounds (median reported)")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="torch intra-op threads")
    parser.add_argument("--clock", choices=("auto",) + CLOCKS, default="auto",
                        help="cpu = process CPU time, wall = elapsed; auto = cpu with 1 thread, else wall")
    parser.add_argument("--out", default=str(RESULTS), help="folder for <name>.json and <name>.md")


def start(args):
    """Apply --threads and --clock; returns the machine description to report."""
    threads = set_threads(args.threads)
    args.clock = default_clock(threads) if args.clock == "auto" else args.clock
    return machine_info(args.clock)


def median(values):
    return statistics.median(values)


def fmt(x, digits=3):
    """Short human number for tables."""
    if x is None:
        return "—"
    if isinstance(x, str):
        return x
    if isinstance(x, int):
        return f"{x:,}"
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def markdown_table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name, payload, markdown, out_dir=RESULTS):
    """benchmarks/results/<name>.json (payload + machine) and <name>.md (the table as printed)."""
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / f"{name}.json", payload)
    atomic_write_text(out_dir / f"{name}.md", markdown.rstrip() + "\n")
    return out_dir / f"{name}.json", out_dir / f"{name}.md"


def report(name, title, info, tables, notes=(), payload=None, out_dir=RESULTS, write=True):
    """Print a Markdown block (title, machine, tables, notes) and write it with the JSON payload."""
    parts = [f"### {title}", "", f"_{machine_line(info)}_", ""]
    for caption, table in tables:
        if caption:
            parts += [caption, ""]
        parts += [table, ""]
    parts += [f"- {n}" for n in notes]
    markdown = "\n".join(parts).rstrip() + "\n"
    print(markdown)
    if write:
        paths = write_results(name, {"benchmark": name, "machine": info, **(payload or {})}, markdown, out_dir)
        print("wrote " + ", ".join(str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in paths))
    return markdown


# ---------------------------------------------------------------- models

def tiny_tokenizer():
    from t3d.model.checkpoint import DEFAULT_MODEL, load_tokenizer

    return load_tokenizer(str(DEFAULT_MODEL))


def random_sdar(tokenizer, seed=0, dtype=torch.float32, device="cpu", **overrides):
    """A random-weight SDAR of the embedded default's shape (t3d.model.tiny.TINY_CONFIG) with that
    tokenizer's vocabulary; `overrides` change the shape (e.g. hidden_size=512)."""
    from t3d.model.sdar import SDARConfig, SDARForCausalLM
    from t3d.model.tiny import TINY_CONFIG

    shape = {**TINY_CONFIG, "max_position_embeddings": 4096, **overrides}
    config = SDARConfig(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None, mask_token_id=tokenizer.mask_token_id, block_size=4, **shape,
    )
    torch.manual_seed(seed)
    return SDARForCausalLM(config).to(device=device, dtype=dtype).eval()


def model_shape(model):
    c = model.config
    return {
        "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size, "layers": c.num_hidden_layers,
        "heads": c.num_attention_heads, "kv_heads": c.num_key_value_heads, "head_dim": c.head_dim,
        "vocab": c.vocab_size, "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
    }


def random_prompts(n, lengths, vocab_ids, seed=0):
    """n prompts of the given lengths (cycled) drawn from vocab_ids (no special tokens)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = lengths[i % len(lengths)]
        out.append(vocab_ids[torch.randint(len(vocab_ids), (length,), generator=g)].tolist())
    return out


def plain_vocab(tokenizer):
    special = set(tokenizer.all_special_ids)
    return torch.tensor([i for i in range(len(tokenizer)) if i not in special])


# ---------------------------------------------------------------- memory

def _status_mib(field):
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def maxrss_mib():
    """Peak resident set size of this process (VmHWM; ru_maxrss where /proc is missing). VmHWM, not
    ru_maxrss: a child's ru_maxrss starts at its parent's RSS at fork and clear_refs cannot lower it."""
    peak = _status_mib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib():
    rss = _status_mib("VmRSS")
    return rss if rss is not None else float("nan")


def reset_peak_rss():
    """Reset this process's RSS high-water mark (Linux >= 4.0: clear_refs 5 resets VmHWM),
    so a later `maxrss_mib()` is the peak of what ran after this call. False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return maxrss_mib() <= current_rss_mib() + 1


def measure_peak(work):
    """Run `work()` with the RSS high-water mark reset first -> (its result, {rss_before_mib, peak_rss_mib,
    peak_extra_mib}): the extra memory `work` needs at its peak (see MEMORY_METHOD)."""
    reset_peak_rss()
    before = current_rss_mib()
    result = work()
    peak = maxrss_mib()
    return result, {"rss_before_mib": before, "peak_rss_mib": peak, "peak_extra_mib": peak - before}


MEMORY_METHOD = (
    "a fresh subprocess per variant builds what the work needs (model, optimizer state, inputs), resets its RSS "
    "high-water mark "
    "(/proc/self/clear_refs 5), runs the work, and reports peak RSS (VmHWM) minus the RSS "
    "before the work: the extra memory the work needs at its peak. tracemalloc cannot see torch's CPU "
    "allocations; RSS sees all of them. glibc's mmap threshold is fixed at 128 KiB in the child so freed "
    "tensors leave RSS at once."
)


# glibc returns freed blocks above the mmap threshold to the OS at once, but raises that threshold after
# each such free, after which big tensors come from the heap and stay resident when freed. A fixed
# threshold (which disables the adjustment) keeps RSS close to live allocations, so a warm-up step's
# freed memory does not hide inside the baseline.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def run_child(script, args, timeout=600):
    """Run `python script args...` in a fresh process; its last stdout line is JSON -> dict."""
    cmd = [sys.executable, str(script), *map(str, args)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), **MALLOC_ENV}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- synthetic rollout examples

def trajectory_step_map(prompt_len, n, block_size, steps, g):
    """A static-strategy step map for n response tokens, as the decoder writes it: blocks aligned to
    absolute positions, each block's tokens unmasked in a random order, ceil(B/S) ... per step."""
    from t3d.decode.decoder import unmask_schedule

    schedule = unmask_schedule(block_size, steps)
    out, step, j = [], 0, 0
    first = block_size - prompt_len % block_size  # response tokens in the block shared with the prompt tail
    while j < n:
        size = min(first if j == 0 else block_size, n - j)
        order = torch.randperm(size, generator=g).tolist()
        values = [0] * size
        k = 0
        for s in range(steps):
            take = min(schedule[s], size - k)
            if take <= 0:
                break
            step += 1
            for idx in order[k: k + take]:
                values[idx] = step
            k += take
        out += values
        j += size
    return out


def synthetic_examples(n, vocab_ids, eos_id, pad_id, *, seed=0, prompt_range=(40, 200), response_median=300,
                       max_response=1024, post_num=3, block_size=4, steps=4):
    """Rollout examples in t3d.train.data's example format (index, prompt_ids, response_ids, step_map, real_len):
    prompt lengths uniform in prompt_range, response lengths log-normal (median `response_median`,
    clipped to [16, max_response]); half end with EOS followed by `post_num` pads, as t3d.train.data builds them."""
    g = torch.Generator().manual_seed(seed)
    lengths = (torch.randn(n, generator=g) * 0.6).exp() * response_median
    lengths = lengths.round().long().clamp(16, max_response).tolist()
    prompts = torch.randint(prompt_range[0], prompt_range[1] + 1, (n,), generator=g).tolist()
    examples = []
    for i in range(n):
        p, r = prompts[i], lengths[i]
        ends = bool(torch.rand((), generator=g) < 0.5) and r < max_response
        body = r - 1 if ends else r
        response = vocab_ids[torch.randint(len(vocab_ids), (body,), generator=g)].tolist() + ([eos_id] if ends else [])
        steps_map = trajectory_step_map(p, len(response), block_size, steps, g)
        n_pad = min(post_num, max_response - len(response)) if ends else 0
        examples.append({
            "index": i, "prompt_ids": vocab_ids[torch.randint(len(vocab_ids), (p,), generator=g)].tolist(),
            "real_len": len(response), "response_ids": response + [pad_id] * n_pad,
            "step_map": steps_map + [max(steps_map) + 1] * n_pad,
        })
    return examples
