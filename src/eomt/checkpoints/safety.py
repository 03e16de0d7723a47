"""What a file may run when it is loaded: nothing, unless the user trusts it (`trust_pickle=True`).

Un-pickling can call any Python function, so every loader here un-pickles with
`weights_only=True` (tensors and plain containers only; an explicit argument, which the
`TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD` environment variable does not override). Exported graphs
are loaded by torch's own readers, which un-pickle without that restriction:
- a `.pt2` ExportedProgram is checked member by member first (`check_exported_program`): every
  member torch would un-pickle must load weights-only, and compiled code or pickled Python
  objects are refused;
- a `.ts` TorchScript file is code (torch documents `torch.jit.load` as unsafe for untrusted
  files): it is refused outright.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from collections import Counter
from pathlib import Path

import torch

from eomt.checkpoints.io import CheckpointError

TRUST_HINT = "if you trust its source, load it with trust_pickle=True (CLI: --trust-pickle)"


def refuse_torchscript(path: Path) -> None:
    """Raise: a TorchScript file runs its own code when loaded and called."""
    raise CheckpointError(
        f"{path}: a TorchScript file holds code that runs when it is loaded (torch.jit.load is unsafe for "
        f"untrusted files); {TRUST_HINT}, or use the .onnx or .pt2 export instead"
    )


def check_exported_program(path: Path) -> None:
    """Raise `CheckpointError` unless loading the `.pt2` archive at `path` runs no code of its own.

    Members torch un-pickles (sample inputs, pickled weights and constants, legacy `.pt` members)
    must load with `weights_only=True`; compiled AOTInductor code, pickled custom objects and
    duplicate member names (which two zip readers may resolve differently) are refused.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            twice = [n for n, c in Counter(names).items() if c > 1]
            if twice:
                raise CheckpointError(f"{path}: archive member {twice[0]!r} appears twice; refusing an ambiguous archive")
            inner = {n.split("/", 1)[-1]: n for n in names}  # torch's reader drops the top folder
            for name, full in inner.items():
                if name.startswith("data/aotinductor/"):
                    raise CheckpointError(f"{path}: holds compiled code ({name}); {TRUST_HINT}")
                if name.endswith(".pt"):
                    _weights_only(zf.read(full), path, name)
            for folder in ("data/weights/", "data/constants/"):
                for name in [n for n in inner if n.startswith(folder) and n.endswith("_config.json")]:
                    _check_payload_config(zf, inner, folder, name, path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path}: not a readable .pt2 archive ({type(e).__name__}: {e})") from None


def _check_payload_config(zf: zipfile.ZipFile, inner: dict[str, str], folder: str, name: str, path: Path) -> None:
    entries = json.loads(zf.read(inner[name])).get("config", {})
    for fqn, meta in entries.items():
        file = str(meta.get("path_name", ""))
        if folder == "data/constants/" and not file.startswith("tensor_"):
            raise CheckpointError(f"{path}: constant {fqn!r} is a pickled Python object ({file}); {TRUST_HINT}")
        if meta.get("use_pickle"):
            member = inner.get(folder + file)
            if member is None:
                raise CheckpointError(f"{path}: {name} names a missing member {folder + file}")
            _weights_only(zf.read(member), path, folder + file)


def _weights_only(data: bytes, path: Path, name: str) -> None:
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: member {name} holds pickled Python objects besides tensors; {TRUST_HINT}"
        ) from None
    except Exception as e:
        raise CheckpointError(f"{path}: member {name} is unreadable ({type(e).__name__}); it may be corrupt") from None
