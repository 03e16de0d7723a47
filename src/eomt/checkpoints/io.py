"""Reading and writing tensor files: torch zip archives, safetensors, sharded indexes.

Files are written atomically with the project's one writer, `eomt.files.write_atomic`.

Everything that touches bytes on disk lives here, so that every unreadable input fails with one
`CheckpointError` line naming the file.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from eomt import files
from eomt.errors import EomtError

StateDict = dict[str, Tensor]

# Weight files of a saved folder, in the order they are looked for.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


class CheckpointError(EomtError, ValueError):
    """A checkpoint that cannot be read or does not fit; the message names the file and the misfit."""


def is_safetensors(path: Path) -> bool:
    """True when `path` starts like a safetensors file (u64 header length, then a JSON object)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < n < path.stat().st_size


def read_safetensors(path: Path) -> tuple[StateDict, dict[str, str]]:
    """Tensors (on CPU) and the string metadata of a safetensors file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise CheckpointError(f"{path}: not a readable safetensors file ({_reason(e)})") from None
    return tensors, meta


def read_torch(path: Path, trust_pickle: bool = False) -> Any:
    """`torch.load` on CPU, restricted to tensors and plain containers unless `trust_pickle`.

    A file that is not a torch archive (text, truncated download) raises a one-line CheckpointError.
    """
    if not trust_pickle:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if "Weights only load failed" in str(e) and zipfile.is_zipfile(path):
                raise CheckpointError(
                    f"{path}: the checkpoint holds pickled Python objects besides tensors; if you trust "
                    "its source, load it with trust_pickle=True (CLI: --trust-pickle)"
                ) from None
            raise _not_a_checkpoint(path, e) from None
        except Exception as e:
            raise _not_a_checkpoint(path, e) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise _not_a_checkpoint(path, e) from None


def _not_a_checkpoint(path: Path, e: BaseException) -> CheckpointError:
    if _looks_zip(path):
        kind = "a truncated or corrupt PyTorch archive"
    else:
        kind = "not a PyTorch or safetensors checkpoint"
    return CheckpointError(f"{path}: {kind} ({_reason(e)}); it may be truncated or the wrong file")


def _looks_zip(path: Path) -> bool:
    with contextlib.suppress(OSError), open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"
    return False


def _reason(e: BaseException) -> str:
    """The first line of an exception message, shortened: library messages can span pages."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = (text[:97] + "...") if len(text) > 100 else text
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def read_tensor_file(path: Path, trust_pickle: bool = False) -> tuple[Any, dict[str, str]]:
    """The content of one weight file: (object, safetensors metadata or {})."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    if is_safetensors(path):
        return read_safetensors(path)
    if path.suffix == ".safetensors":
        raise CheckpointError(f"{path}: not a safetensors file (bad header); it may be truncated")
    return read_torch(path, trust_pickle), {}


def find_weight_file(folder: Path) -> Path:
    """The weight file (or shard index) of a saved folder, in `WEIGHT_FILES` order."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{folder}: no weight file found (expected one of: {', '.join(WEIGHT_FILES)})")


def read_sharded(index: Path, trust_pickle: bool = False) -> StateDict:
    """All shards listed in a transformers `*.index.json` weight map, merged."""
    try:
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index}: not a valid shard index ({_reason(e)})") from None
    out: StateDict = {}
    for shard in sorted(set(weight_map.values())):
        obj, _ = read_tensor_file(index.parent / shard, trust_pickle)
        out.update(as_state_dict(obj, index.parent / shard))
    return out


def as_state_dict(obj: Any, path: Path) -> StateDict:
    """Check that `obj` is a mapping of names to tensors (a Lightning `state_dict` is unwrapped)."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: expected a state dict (names -> tensors), found {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(
            f"{path}: expected a state dict (names -> tensors), found non-tensor entries {bad[:3]}"
        )
    return dict(obj)


def save_safetensors(tensors: StateDict, path: Path, metadata: dict[str, str]) -> Path:
    """Write contiguous CPU copies of `tensors` to `path` atomically, the header's metadata in
    sorted order (the writer's own order varies from run to run), so equal inputs give equal bytes."""
    from safetensors.torch import save_file

    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}

    def write(tmp: Path) -> None:
        save_file(data, str(tmp), metadata=metadata)
        _sort_header(tmp)

    return files.write_atomic(path, write)


def _sort_header(path: Path) -> None:
    """Rewrite a safetensors header in place with its metadata keys sorted (same length)."""
    with open(path, "r+b") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        raw = f.read(size)
        header = json.loads(raw)
        meta = header.get("__metadata__")
        if not isinstance(meta, dict):
            return
        header["__metadata__"] = dict(sorted(meta.items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(text) > size:  # an escaping we do not reproduce: keep the writer's order
            return
        f.seek(8)
        f.write(text.ljust(size))  # the format pads its header with spaces


def save_torch(obj: Any, path: Path) -> Path:
    """`torch.save` to `path` atomically."""
    return files.write_atomic(path, lambda tmp: torch.save(obj, tmp))
