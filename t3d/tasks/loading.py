"""Dataset specs -> items (plain dicts): the one loader of rollout, evaluation, the lm-eval tasks and training.

A spec is
  * a name: `MATH500` -> data/MATH500.json (or .jsonl / .parquet / .csv) under the repository;
  * a local file: `.json` (a list of objects, or one object), `.jsonl`, `.parquet` or `.csv`;
  * a hub dataset: `hub:<owner>/<name>` (e.g. `hub:openai/gsm8k`), loaded with `datasets.load_dataset`;
    its config and split are separate settings (`subset`, `split`).
JSON and JSONL are read as written (t3d.common.io.read_records): Arrow, under `datasets`, keeps one type per
column, so optional keys and mixed types of hand-written JSON would not come back unchanged. Parquet,
CSV and hub datasets go through `datasets`; Arrow stores a key that some rows lack as null, so a null
reads as an absent key; CSV cells are text (`"007"` stays `"007"`). Then `columns` maps toolkit keys to
source columns ({question: problem} copies column `problem` into `question`; the source columns are
kept) and `answer_format: gsm8k` turns `ground_truth_answer` "... #### 1,234" into "1234".
Every failure is a DataError, one line naming the file or dataset and the setting.
"""
import contextlib
import csv
import json
import re
import tempfile
import warnings
from pathlib import Path

from t3d.common.paths import DATA, HOME
from t3d.common.errors import first_line
from t3d.common.io import DataError, atomic_write_text, read_records

HUB_PREFIX = "hub:"
JSON_SUFFIXES = (".json", ".jsonl")
ARROW_FORMATS = {".parquet": "parquet", ".csv": "csv"}
SUFFIXES = JSON_SUFFIXES + tuple(ARROW_FORMATS)
ANSWER_FORMATS = ("gsm8k",)
TIMEOUT_S = 10  # hub reachability check: an unreachable hub fails fast instead of ~25 s of retries
_HUB_HINT = ("save it with data/download_data.py on a machine with network, or pass a local "
             ".json/.jsonl/.parquet/.csv file")


def invalid_text(value):
    """True for a string that cannot be written as UTF-8: JSON's \\ud800-style escapes decode to unpaired
    surrogates, which no tokenizer or output file accepts."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_text(records, source):
    """One-line DataError naming the first item and key whose text is not valid Unicode."""
    for i, record in enumerate(records):
        for key, value in record.items() if isinstance(record, dict) else ():
            values = value if isinstance(value, list) else [value]
            if any(invalid_text(v) for v in values):
                raise DataError(f"{source}: item {i}: '{key}' holds an unpaired surrogate (e.g. \\ud800): "
                                "not valid Unicode text")


def is_hub(spec):
    return str(spec).startswith(HUB_PREFIX)


def _is_name(raw):
    # a bare name (no known suffix, no folder) is looked up in data/; `SDAR-1.7B-x` has a "suffix" too
    return raw.suffix not in SUFFIXES and len(raw.parts) == 1


def find_file(spec):
    """The local file a name or path denotes, or None. DataError for an existing file of an unknown format."""
    raw = Path(str(spec)).expanduser()
    names = [DATA / f"{raw}{suffix}" for suffix in SUFFIXES] if _is_name(raw) else []
    for candidate in (raw, HOME / raw, *names):
        if candidate.is_file():
            if candidate.suffix not in SUFFIXES:
                raise DataError(f"{candidate}: unsupported dataset format '{candidate.suffix}' (expected "
                                f"{', '.join(SUFFIXES)}, or {HUB_PREFIX}<owner>/<name> for a hub dataset)")
            return candidate
    return None


def find_saved(spec):
    """The folder of a `datasets` save_to_disk (a Dataset or a DatasetDict) a path denotes, or None."""
    raw = Path(str(spec)).expanduser()
    for candidate in (raw, HOME / raw):
        if (candidate / "dataset_dict.json").is_file() or (candidate / "state.json").is_file():
            return candidate
    return None


def read_saved(path, split=None, key_prefix=""):
    """(label, rows) of a save_to_disk folder; a DatasetDict needs `split` unless it holds one split."""
    import datasets

    try:
        with _quiet_datasets():
            data = datasets.load_from_disk(str(path))
    except Exception as err:  # a damaged folder (missing arrow file, bad state.json)
        raise DataError(f"{path}: cannot load the saved dataset ({first_line(err, with_type=True, limit=160)})") from None
    label = f"{path}" + (f" (split {split})" if split is not None else "")
    if isinstance(data, datasets.DatasetDict):
        if split is None and len(data) != 1:
            raise DataError(f"{path} has the splits {', '.join(data)}: choose one with {key_prefix}split")
        if split is not None and split not in data:
            raise DataError(f"{key_prefix}split={split!r}: {path} has the splits {', '.join(data)}")
        data = data[split] if split is not None else next(iter(data.values()))
    elif split is not None:
        raise DataError(f"{key_prefix}split={split!r}: {path} is a single saved split")
    return label, _rows(data)


def missing_message(spec):
    """The one-line error for a name or path that is no file."""
    raw = Path(str(spec))
    if len(raw.parts) == 2 and not raw.suffix and not str(spec).startswith((".", "/", "~")):
        return f"{spec}: no such file or folder (for a hub dataset write {HUB_PREFIX}{spec})"
    if not _is_name(raw):
        return f"{raw}: file not found"
    return (f"dataset '{spec}': no file {DATA / (str(raw) + '.json')} "
            f"(run `python data/download_data.py --dataset {raw}` or pass a path)")


def check_options(key_prefix, split=None, subset=None, columns=None, answer_format=None, hub=False):
    """The dataset settings as plain values; one-line error naming the key (`<key_prefix>columns`, ...)."""
    if answer_format is not None and answer_format not in ANSWER_FORMATS:
        raise DataError(f"{key_prefix}answer_format must be null or one of {', '.join(ANSWER_FORMATS)}, "
                        f"got {answer_format!r}")
    if columns is not None:
        if hasattr(columns, "items"):
            columns = {str(k): v for k, v in columns.items()}
        if not isinstance(columns, dict) or not all(isinstance(v, str) and v for v in columns.values()):
            raise DataError(f"{key_prefix}columns must be a mapping {{toolkit key: source column}}, "
                            f"e.g. {{question: problem}}, got {columns!r}")
    if not hub:
        for key, value in (("split", split), ("subset", subset)):
            if value is not None:
                raise DataError(f"{key_prefix}{key}={value!r} applies to hub datasets ({HUB_PREFIX}<owner>/<name>) only; "
                                "a local file is one split")
    return columns or {}


def hub_reachable():
    """One quick request to the hub endpoint (a cold `load_dataset` retries for ~25 s when offline)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=TIMEOUT_S)
    except Exception:  # DNS failure, refused connection, timeout, proxy error
        return False
    return True


@contextlib.contextmanager
def _quiet_datasets():
    """No progress bars, and no logged "Failed to read file" line before the error we turn into one line."""
    import datasets

    level, bars = datasets.logging.get_verbosity(), datasets.is_progress_bar_enabled()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)
        if bars:
            datasets.enable_progress_bars()


def _rows(dataset):
    """Arrow rows -> dicts without the nulls Arrow puts where a row lacks a key."""
    return [{k: v for k, v in row.items() if v is not None} for row in dataset.to_list()]


def _read_arrow_file(path):
    """A .parquet / .csv file through `datasets` (in-memory; its Arrow cache lives in a temp dir, then goes)."""
    import datasets
    import pandas

    fmt = ARROW_FORMATS[path.suffix]
    kwargs = {}
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            if pq.ParquetFile(path).metadata.num_rows == 0:  # datasets fails on 0 rows with an Arrow batch error
                return []
        else:
            with open(path, newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), None)
            if not header:
                raise DataError(f"{path}: file is empty")
            # CSV has no types: every cell is text, an empty cell "" (pandas would guess ints and NaN); no
            # implicit index column, so a row longer than the header is an error, not shifted data
            kwargs = {"features": datasets.Features({name: datasets.Value("string") for name in header}),
                      "keep_default_na": False, "index_col": False}
        with tempfile.TemporaryDirectory(prefix="t3d-datasets-") as cache, _quiet_datasets(), \
                warnings.catch_warnings():
            warnings.simplefilter("error", pandas.errors.ParserWarning)  # pandas only warns when it drops cells
            data = datasets.load_dataset(fmt, data_files=str(path), split="train", cache_dir=cache,
                                         keep_in_memory=True, **kwargs)
            return _rows(data)
    except DataError:
        raise
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    except Exception as err:  # ArrowInvalid, DatasetGenerationError (the cause says why), ParserError, ...
        if "corresponds to no data" in str(err):  # how datasets says a file has no rows (a CSV header alone)
            return []
        raise DataError(f"{path}: cannot read as {'CSV' if fmt == 'csv' else 'Parquet'} "
                        f"({first_line(err.__cause__ or err, with_type=True, limit=160)})") from None


def hub_label(repo_id, subset=None, split=None):
    details = ", ".join(f"{k} {v}" for k, v in (("subset", subset), ("split", split)) if v is not None)
    return f"{HUB_PREFIX}{repo_id}" + (f" ({details})" if details else "")


def read_hub(repo_id, subset=None, split=None, key_prefix="", data_files=None):
    """(label, rows) of a hub dataset split through the standard `datasets` cache; offline, a one-line error
    at once. `data_files` picks files inside the dataset repo (their split is "train")."""
    import datasets

    label = hub_label(repo_id, subset, split) if data_files is None else f"{HUB_PREFIX}{repo_id}/{data_files}"
    load_kwargs = {} if data_files is None else {"data_files": data_files}
    # offline (HF_HUB_OFFLINE=1 or HF_DATASETS_OFFLINE=1) datasets serves a cached copy, if any; online, a
    # cold load with no network would retry for ~25 s: check the hub first and fail at once
    if not datasets.config.HF_HUB_OFFLINE and not hub_reachable():
        raise DataError(f"could not fetch the hub dataset {label}: the hub is unreachable (HF_HUB_OFFLINE=1 "
                        f"uses a copy in the local datasets cache); {_HUB_HINT}")
    try:
        with _quiet_datasets():
            data = datasets.load_dataset(repo_id, subset, split=split, **load_kwargs)
    except (ConnectionError, datasets.exceptions.DatasetNotFoundError) as err:
        raise DataError(f"could not fetch the hub dataset {label} ({first_line(err, with_type=True, limit=160)}); {_HUB_HINT}") from None
    except ValueError as err:  # unknown split / config: datasets lists the valid ones
        if "corresponds to no data" in str(err):  # how datasets says a split has no rows
            raise DataError(f"{label}: dataset is empty") from None
        raise DataError(f"hub dataset {label}: {first_line(err, with_type=True, limit=160)} (set {key_prefix}split / {key_prefix}subset)") from None
    except Exception as err:  # a file of the dataset that Arrow cannot read (the cause says why)
        raise DataError(f"hub dataset {label}: cannot load ({first_line(err.__cause__ or err, with_type=True, limit=160)})") from None
    if isinstance(data, datasets.DatasetDict):
        if len(data) != 1:
            raise DataError(f"hub dataset {label} has the splits {', '.join(data)}: choose one with {key_prefix}split")
        data = next(iter(data.values()))
    return label, _rows(data)


def gsm8k_answer(text):
    """GSM8K's solution text "... #### 1,234" -> "1234" (None when there is no `#### answer`)."""
    if not isinstance(text, str) or "####" not in text:
        return None
    return text.rsplit("####", 1)[1].strip().replace(",", "") or None


def apply_columns(records, source, columns, answer_format, key_prefix):
    """Copy mapped source columns into toolkit keys, then normalise the answer; new dicts, same order."""
    present = {}
    for record in records:  # a column any row has (Arrow rows may lack null keys)
        present.update(dict.fromkeys(record))
    for key, column in columns.items():
        if column not in present:
            raise DataError(f"{key_prefix}columns.{key}: no column '{column}' in {source} "
                            f"(columns: {', '.join(present) or 'none'})")
    if columns:
        records = [{**r, **{k: r[c] for k, c in columns.items() if c in r}} for r in records]
    if answer_format == "gsm8k":
        out = []
        for i, record in enumerate(records):
            answer = gsm8k_answer(record.get("ground_truth_answer"))
            if answer is None:
                raise DataError(f"{source}: item {i}: {key_prefix}answer_format=gsm8k but 'ground_truth_answer' has "
                                f"no '#### <answer>' (map it with {key_prefix}columns.ground_truth_answer=<column>)")
            out.append({**record, "ground_truth_answer": answer})
        records = out
    return records


def load_records(spec, *, split=None, subset=None, columns=None, answer_format=None, key_prefix="dataset."):
    """(source, items) for a spec. `source` is the file's Path, or a `hub:<id> (subset .., split ..)` label;
    `key_prefix` is how errors name the settings (e.g. "evaluation.dataset_"). Empty data is an error."""
    spec = str(spec)
    hub = is_hub(spec)
    saved = None if hub else find_saved(spec)
    # a saved DatasetDict has splits; a hub dataset has splits and subsets; a file is one split
    columns = check_options(key_prefix, None if saved else split, subset, columns, answer_format, hub=hub)
    if saved is not None:
        source, records = read_saved(saved, split, key_prefix)
    elif hub:
        repo_id = spec[len(HUB_PREFIX):].strip()
        if not repo_id:
            raise DataError(f"'{spec}': expected {HUB_PREFIX}<owner>/<name>, e.g. {HUB_PREFIX}openai/gsm8k")
        source, records = read_hub(repo_id, subset, split, key_prefix)
    else:
        path = find_file(spec)
        if path is None:
            raise DataError(missing_message(spec))
        source = path
        records = read_records(path) if path.suffix in JSON_SUFFIXES else _read_arrow_file(path)
    if not records:
        raise DataError(f"{source}: dataset is empty")
    check_text(records, source)
    return source, apply_columns(records, source, columns, answer_format, key_prefix)


def hub_snapshot(spec, split=None, subset=None, key_prefix="dataset."):
    """A hub dataset's rows (before column mapping) as a JSONL file under the `datasets` cache, named by a hash
    of its content: training reads a fixed file, and resume fingerprints its bytes. Written once, atomically."""
    import hashlib

    import datasets

    source, rows = load_records(spec, split=split, subset=subset, key_prefix=key_prefix)
    try:
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    except TypeError as err:  # images, audio, timestamps: not a text dataset
        raise DataError(f"{source}: rows are not JSON-serialisable ({err}); training reads text datasets") from None
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(source).removeprefix(HUB_PREFIX)).strip("_")[-80:]
    path = (Path(datasets.config.HF_DATASETS_CACHE) / "t3d_snapshots"
            / f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.jsonl")
    if not path.is_file():
        atomic_write_text(path, text)
    return source, path


def section_options(section, key_prefix):
    """load_records settings from a config section (or a dict): evaluation.dataset_{split,subset,columns,
    answer_format} for key_prefix "evaluation.dataset_", dataset.{split,subset,columns,answer_format} for "dataset."."""
    from omegaconf import OmegaConf

    name = key_prefix.rsplit(".", 1)[-1]  # "dataset_" or ""
    options = {k: section.get(f"{name}{k}") for k in ("split", "subset", "columns", "answer_format")}
    if options["columns"] is not None and OmegaConf.is_config(options["columns"]):
        options["columns"] = OmegaConf.to_container(options["columns"])
    return {**options, "key_prefix": key_prefix}
