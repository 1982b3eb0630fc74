"""Dataset / record I/O: JSON or JSONL in, atomic writes out (temp file, then rename)."""
import errno
import json
import os
import tempfile
from pathlib import Path

from t3d.common.errors import DataError  # noqa: F401  (raised here; imported from here by callers)


_UMASK = os.umask(0)
os.umask(_UMASK)


def _name_file(err, path):
    """A failed write (ENOSPC, EIO) names no file; give it the output's, for the one-line error."""
    if isinstance(err, OSError) and err.filename is None:
        err.filename = str(path)


def atomic_write_text(path, text):
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as err:  # a file where a directory of the path should be
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), err.filename) from None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs follow the umask like open() would
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        _name_file(err, path)
        raise
    return path


def atomic_write_json(path, obj, indent=2):
    return atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=indent) + "\n")


def atomic_write_jsonl(path, records):
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def append_text(path, text):
    """Append `text` in one write; on failure (a full disk) cut the file back so no half line is left."""
    with open(path, "a", encoding="utf-8") as f:
        size = f.tell()
        try:
            f.write(text)
            f.flush()
        except BaseException as err:
            f.truncate(size)
            _name_file(err, path)
            raise


def check_output_dir(directory, key):
    """Fail early, before any work and without creating anything, if outputs cannot be written under
    `directory` (named by config key `key`): its nearest existing ancestor must be a writable directory."""
    directory = Path(directory).absolute()
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise DataError(f"{key}: cannot write outputs under {directory}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DataError(f"{key}: cannot write outputs under {directory}: {existing} is not writable")
    return directory


def read_records(path):
    """A JSON list of objects, a single JSON object, or JSONL -> list[dict]. One-line errors."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); datasets must be UTF-8 JSON/JSONL") from None
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as whole_err:
        data = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                data.append(json.loads(line))
            except json.JSONDecodeError as err:
                where = f"line {lineno}" if lineno > 1 else f"line {whole_err.lineno} col {whole_err.colno}"
                raise DataError(f"{path}: malformed JSON/JSONL at {where}: {err.msg}") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise DataError(f"{path}: item {i} is a {type(item).__name__}, expected an object")
    return data
