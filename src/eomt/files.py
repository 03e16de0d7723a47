"""The one atomic writer: every result, model, checkpoint and report file goes through here.

- `write_atomic(path, data)`: `data` is bytes, text, or a callback `write(tmp_path)` (for writers
  that want a path, such as `torch.save` or safetensors). The file appears complete or not at all.
- The file gets the mode an ordinary `open()` would give it (0666 less the umask), not mkstemp's 0600.
- Temporary files are named `.<name>.<pid>.<token>.tmp` beside the target; the ones a killed process
  left behind are removed before the next write of that target and by `clean_stale_temps` at the
  start of a run (a temporary file is stale when the process that made it is gone, or when it is
  older than the process of the same id now running).
- `temp_folder(path)`: a work folder for writers that make several files (ONNX with external
  weights), cleaned like a temporary file.
- `write_json(path, obj)`: strict JSON (no bare NaN / Infinity): a non-finite number is written as
  null, and for a JSON object the reason is given under "null_values".
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import numbers
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Union

log = logging.getLogger(__name__)

WriteData = Union[bytes, str, Callable[[Path], None]]
NULL_KEY = "null_values"
NAN_REASON = "not a finite number (undefined)"
UNDEFINED_METRIC = "undefined: nothing to measure it on (no ground truth of that class or size range)"

# Temporary names: ours (`.model.safetensors.123.ab12cd34.tmp`), mkstemp's of earlier versions
# (`.model.safetensors.k3j_x9a2.tmp`) and Lightning-era pid suffixes (`.last.ckpt.tmp123`).
_TEMP = re.compile(r"^\.(?P<name>.+?)(?:\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp|\.[A-Za-z0-9_]{8}\.tmp|\.tmp(?P<old>\d+))$")
_STARTED = time.time()


def _process_start(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), where the system tells (Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: start time in clock ticks after boot
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _STARTED if pid == os.getpid() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    except OSError:
        return True
    return True


def _is_stale(path: Path, pid: int | None) -> bool:
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return False
    if pid is None:  # no owner recorded: stale when older than this process
        return mtime < (_process_start(os.getpid()) or _STARTED)
    if not _alive(pid):
        return True
    started = _process_start(pid)
    # The id was reused (a container restarts its process with the same id): the file predates it.
    return started is not None and mtime < started - 1.0


def clean_stale_temps(folder: str | Path, name: str | None = None) -> list[Path]:
    """Remove the temporary files that interrupted writes left in `folder` (of target `name`, or
    of any target); returns the files removed. Files of writes still under way are kept."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        m = _TEMP.match(entry.name)
        if not m or (name is not None and m["name"] != name) or entry.is_symlink():
            continue
        pid = m["pid"] or m["old"]
        if _is_stale(entry, int(pid) if pid else None):
            with contextlib.suppress(OSError):
                if entry.is_dir():  # a work folder (`temp_folder`)
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed.append(entry)
    if removed:
        log.info("removed %d temporary file(s) of interrupted writes in %s", len(removed), folder)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary file beside `path` (mode 0666 less the umask); when the block ends
    without an exception it replaces `path` in one rename, else it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent, path.name)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies
    mode = tmp.stat().st_mode & 0o777
    try:
        yield tmp
        # Some writers replace the file with their own 0600 one (safetensors does): the umask's mode.
        if tmp.stat().st_mode & 0o777 != mode:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def temp_folder(path: str | Path) -> Iterator[Path]:
    """A private work folder beside `path`, named like a temporary file of it (so an interrupted
    run's folder is removed as stale like one), removed when the block ends. For writers that
    make several files, which are then moved into place with `write_atomic`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent, path.name)
    work = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    work.mkdir()
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_atomic(path: str | Path, data: WriteData) -> Path:
    """Write bytes, text (UTF-8) or `data(tmp_path)`'s output to `path` atomically; returns `path`."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        elif isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            data(tmp)
    return path


def finite(obj: Any, reason: str = NAN_REASON) -> tuple[Any, dict[str, str]]:
    """`obj` with every non-finite float replaced by None, and {dotted key path: reason} of those."""
    nulls: dict[str, str] = {}

    def walk(value: Any, where: str) -> Any:
        if isinstance(value, numbers.Real) and not isinstance(value, (int, float)):
            value = float(value)  # numpy scalars
        if isinstance(value, float) and not math.isfinite(value):
            nulls[where or "."] = f"{reason}: {value}"
            return None
        if isinstance(value, dict):
            return {k: walk(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return value

    return walk(obj, ""), nulls


def json_text(obj: Any, indent: int | None = 1, reason: str = NAN_REASON, sort_keys: bool = False) -> str:
    """Strict JSON text of `obj`: non-finite numbers as null, listed with `reason` under
    "null_values" when `obj` is a JSON object (a list has nowhere to say it)."""
    clean, nulls = finite(obj, reason)
    if nulls and isinstance(clean, dict):
        clean = {**clean, NULL_KEY: nulls}
    elif nulls:
        log.warning("%d non-finite number(s) written as null (%s)", len(nulls), ", ".join(list(nulls)[:3]))
    return json.dumps(clean, indent=indent, allow_nan=False, default=_plain, sort_keys=sort_keys) + "\n"


def _plain(value: Any) -> Any:
    """numpy / torch scalars and paths, which `json` does not know."""
    if hasattr(value, "item"):
        value = value.item()
        return None if isinstance(value, float) and not math.isfinite(value) else value
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def write_json(path: str | Path, obj: Any, indent: int | None = 1, reason: str = NAN_REASON) -> Path:
    """Write `obj` as strict JSON (UTF-8) atomically; see `json_text`."""
    return write_atomic(path, json_text(obj, indent, reason))
