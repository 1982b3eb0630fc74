"""Dataset / record I/O: JSON or JSONL in, atomic writes out (temp file, then rename), output locks."""
import errno
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from t3d.common.errors import DataError, ExpectedError  # noqa: F401  (DataError: imported from here by callers)


_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # what open() gives a new file under the process's umask


def _name_file(err, path):
    """A failed write (ENOSPC, EIO) names no file; give it the output's, for the one-line error."""
    if isinstance(err, OSError) and err.filename is None:
        err.filename = str(path)


@contextmanager
def _atomic_temp(path, suffix=".tmp"):
    """(fd, name) of a temp file beside `path` for the caller to write (and close the fd); then it gets the umask's
    mode (mkstemp makes 0600; outputs follow the umask like open() would) and replaces `path`. On any failure it is
    removed and the error names `path`: no half-written output is ever left."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as err:  # a file where a directory of the path should be
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), err.filename) from None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        yield fd, tmp
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        _name_file(err, path)
        raise


def atomic_write_text(path, text):
    with _atomic_temp(path) as (fd, _), os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)


def atomic_save_figure(fig, path, **savefig_kwargs):
    """A matplotlib figure saved as PNG the same way: temp file, the umask's mode, then rename."""
    with _atomic_temp(path, suffix=".png") as (fd, tmp):
        os.close(fd)
        fig.savefig(tmp, format="png", **savefig_kwargs)
    return Path(path)


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


def _parse_json_or_jsonl(path, text):
    try:
        return json.loads(text)
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
        return data


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
        data = _parse_json_or_jsonl(path, text)
    except RecursionError:  # Python's JSON parser recurses once per nesting level
        raise DataError(f"{path}: JSON nested too deeply to be a dataset (more than "
                        f"{sys.getrecursionlimit()} levels)") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise DataError(f"{path}: item {i} is a {type(item).__name__}, expected an object")
    return data


# ------------------------------------------------------------------------------------------------ output locks
class OutputLocked(ExpectedError):
    """Another run holds the lock of an output path."""


def utc_stamp():
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def move_aside(path, stamp=None):
    """Rename `path` to `<path>.previous-<UTC time>` (never overwriting an earlier one); returns the new path."""
    path = Path(path)
    stamp = stamp or utc_stamp()
    target, n = path.with_name(f"{path.name}.previous-{stamp}"), 1
    while target.exists():  # two restarts within one second
        n += 1
        target = path.with_name(f"{path.name}.previous-{stamp}-{n}")
    os.rename(path, target)
    return target


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class OutputLock:
    """`<path>.lock`, created with O_EXCL and holding the owner's pid, host and start time, for as long as a run
    writes `path`. A second run is refused at once with one line naming the holder; a lock left by a dead process
    of this host is taken over (said on stderr). Use as a context manager, or acquire() / release()."""

    def __init__(self, path):
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._token = None

    def _holder(self):
        try:
            return json.loads(self.lock_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def acquire(self):
        import socket
        import sys

        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": utc_stamp(), "token": os.urandom(8).hex()}
        for _ in range(3):  # a stale lock is removed, then tried again
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if not isinstance(holder, dict) or not isinstance(holder.get("pid"), int):
                    raise OutputLocked(f"{self.path} is locked by {self.lock_path}, which names no holder; "
                                       "remove it if no run is writing there") from None
                where = f"pid {holder['pid']} on host {holder.get('host')}, since {holder.get('since')}"
                if holder.get("host") != me["host"] or _pid_alive(holder["pid"]):
                    raise OutputLocked(f"{self.path} is in use by another run ({where}); wait for it to end, or "
                                       f"remove {self.lock_path} if that run is gone") from None
                # the holder died without releasing (kill -9): only the lock whose content we read is removed
                if self._holder() == holder:
                    self.lock_path.unlink(missing_ok=True)
                    print(f"note: removed the stale lock {self.lock_path} ({where}: no such process)", file=sys.stderr)
                continue
            try:
                os.write(fd, (json.dumps(me) + "\n").encode())
            except BaseException as err:
                self.lock_path.unlink(missing_ok=True)
                _name_file(err, self.lock_path)
                raise
            finally:
                os.close(fd)
            self._token = me["token"]
            return self
        raise OutputLocked(f"{self.path}: could not take {self.lock_path} (other runs keep taking it)")

    def release(self):
        if self._token is not None and (self._holder() or {}).get("token") == self._token:
            self.lock_path.unlink(missing_ok=True)
        self._token = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
