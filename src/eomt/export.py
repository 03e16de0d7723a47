"""Export the EoMT network to ONNX, TorchScript or a torch.export ExportedProgram.

Only the network is exported, at one fixed input size and batch: the graph takes float images in
[0, 1] of shape (B, 3, H, W) (ImageNet normalisation is inside) and returns
(mask_logits (B, K, H/4, W/4), class_logits (B, K, C+1)). Resizing, padding, sliding windows and
post-processing stay in Python (`eomt.inference`). The resolved `ModelConfig` travels with every
file (ONNX metadata_props, TorchScript / .pt2 extra files), with `img_size` set to the graph's
input size, so a predictor needs nothing else; `eomt.inference.exported` runs the files.

A model whose masked attention is still active is refused: its forward draws random numbers and
makes intermediate predictions, which an exported graph would freeze at trace time.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from eomt.errors import EomtError
from eomt.files import temp_folder, write_atomic
from eomt.inference.exported import CONFIG_KEY, INPUT_KEY
from eomt.models import EoMT

log = logging.getLogger(__name__)

GRAPH_FORMATS = ("onnx", "torchscript", "exported-program")  # the graph file formats `export_model` writes
_SUFFIX = {"onnx": ".onnx", "torchscript": ".ts", "exported-program": ".pt2"}
_ONNX_INLINE_LIMIT = 1.8 * 2**30  # protobuf limit is 2 GiB; larger weights go to a .data file


class ExportError(EomtError, ValueError):
    """The model or the request cannot be exported; the message says why and what to do."""


class ExportableNetwork(nn.Module):
    """The EoMT forward as a plain tensor function: images -> (mask_logits, class_logits)."""

    def __init__(self, model: EoMT) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model(images)
        return out.mask_logits, out.class_logits


def check_exportable(model: EoMT) -> None:
    """Raise `ExportError` if the model still uses masked attention (annealing unfinished) or
    merges tokens (a per-image token count a static graph cannot hold)."""
    if getattr(model, "token_merging", None) is not None:
        raise ExportError(
            "export: the model has token_merging set; merging picks a different number of tokens per "
            "image, which a static graph cannot express. Set model.token_merging = None to export "
            "(merging stays available in eager PyTorch: Predictor(token_merging=...))"
        )
    if model.masked_attention_active:
        probs = [round(p, 4) for p in model.attn_mask_probs.tolist()]
        raise ExportError(
            f"export: masked attention is still active (attn_mask_probs={probs}); an exported graph "
            "would freeze its random mask draws and intermediate predictions. Finish training until "
            "mask annealing reaches 0 for every block, or pass --force-unmasked "
            "(force_unmasked=True) to export with masked attention switched off, which changes "
            "the predictions of a model that was not annealed"
        )


def export_model(
    model: EoMT,
    path: str | Path,
    format: str = "onnx",
    img_size: tuple[int, int] | None = None,
    batch: int = 1,
    opset: int = 17,
    force_unmasked: bool = False,
    onnx_exporter: str = "auto",
) -> Path:
    """Export `model` at input (batch, 3, *img_size) (default: the config's size) to `path`.

    `format` is one of "onnx", "torchscript", "exported-program". `onnx_exporter` picks the ONNX
    exporter: "dynamo" (torch.export based, needs onnxscript), "legacy" (TorchScript based) or
    "auto" (dynamo when onnxscript is installed). The model is left as it was (its
    attn_mask_probs are restored after a `force_unmasked` export). Returns the written path.
    """
    if format not in GRAPH_FORMATS:
        raise ExportError(f"export: unknown format {format!r} (expected one of: {', '.join(GRAPH_FORMATS)})")
    size = tuple(img_size) if img_size is not None else tuple(model.config.img_size)
    p = model.config.patch_size
    if len(size) != 2 or any(s <= 0 or s % p for s in size):
        raise ExportError(f"export: img_size {size} must be two positive multiples of the patch size {p}")
    if onnx_exporter not in ("auto", "dynamo", "legacy"):
        raise ExportError(f"export: onnx_exporter {onnx_exporter!r} is not one of auto, dynamo, legacy")
    if batch < 1:
        raise ExportError(f"export: batch must be >= 1, got {batch}")
    path = Path(path)
    if path.suffix == "":
        path = path.with_suffix(_SUFFIX[format])
    path.parent.mkdir(parents=True, exist_ok=True)

    saved_probs = model.attn_mask_probs.detach().clone()
    was_training = model.training
    if force_unmasked and model.masked_attention_active:
        log.warning("exporting with masked attention switched off (attn_mask_probs set to 0)")
        model.set_attn_mask_probs([0.0] * model.config.num_blocks)
    try:
        check_exportable(model)
        model.eval()
        net = ExportableNetwork(model).eval()
        device = next(model.parameters()).device
        example = torch.rand(batch, 3, *size, device=device)
        exporters = {
            "onnx": functools.partial(_export_onnx, exporter=onnx_exporter),
            "torchscript": _export_torchscript,
            "exported-program": _export_program,
        }
        # The stored config gives the graph's input size, so a predictor resizes images to it.
        config = model.config.replace(img_size=size)
        meta = {CONFIG_KEY: json.dumps(config.to_dict()), INPUT_KEY: json.dumps([batch, 3, *size])}
        # Tracing warns about every Python branch on shapes; they are expected at a fixed size.
        with torch.no_grad(), warnings.catch_warnings(), _quiet_exporter_logs():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=r".*LeafSpec")  # torch.export's own deprecation
            exporters[format](net, example, path, meta, opset)
    finally:
        model.set_attn_mask_probs(saved_probs)
        model.train(was_training)
    log.info("exported %s network at input %s to %s", format, (batch, 3, *size), path)
    return path


# The ONNX exporter and its optimizer log every pass (about 80 lines for EoMT: deduplicated
# initializers, removed nodes, an opset fallback, skipped torchvision ops), none of which a user
# can act on; while exporting, only their errors pass.
_EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "onnxscript", "onnx_ir")


@contextlib.contextmanager
def _quiet_exporter_logs() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _EXPORTER_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _export_onnx(
    net: nn.Module, example: Tensor, path: Path, meta: dict[str, str], opset: int, exporter: str = "auto"
) -> None:
    try:
        import onnx
    except ImportError:
        raise ExportError("export: ONNX export needs the `onnx` package: pip install 'eomt[onnx]'") from None
    names = dict(input_names=["images"], output_names=["mask_logits", "class_logits"])
    nbytes = sum(t.numel() * t.element_size() for t in net.state_dict().values())
    large = nbytes > _ONNX_INLINE_LIMIT
    has_onnxscript = importlib.util.find_spec("onnxscript") is not None
    if exporter == "auto":
        exporter = "dynamo" if has_onnxscript else "legacy"
    if exporter == "dynamo" and not has_onnxscript:
        raise ExportError("export: the dynamo ONNX exporter needs onnxscript: pip install onnxscript")
    if exporter == "legacy" and large:
        raise ExportError(
            f"export: {nbytes / 2**30:.1f} GiB of weights exceed the 2 GiB ONNX protobuf limit of the "
            "legacy exporter; install onnxscript to use the dynamo exporter (external weights)"
        )
    # The exporters write into a private folder beside the target; the files then move into place,
    # the graph last, so a graph file is there only when it is complete and its weights with it.
    with temp_folder(path) as work:
        draft = work / path.name
        if exporter == "dynamo":
            # The torch.export-based exporter; it writes large weights beside the graph itself.
            program = torch.onnx.export(
                net, (example,), dynamo=True, opset_version=opset, verbose=False, external_data=large, **names
            )
            program.save(str(draft), external_data=large)
        else:
            # Legacy TorchScript-based exporter: needs no onnxscript; supports opset <= 20.
            torch.onnx.export(net, (example,), str(draft), dynamo=False, opset_version=opset, **names)
        proto = onnx.load(str(draft), load_external_data=False)
        del proto.metadata_props[:]
        for key, value in meta.items():
            proto.metadata_props.add(key=key, value=value)
        for extra in sorted(work.iterdir()):  # external weights, named as the graph refers to them
            if extra.name != path.name:
                write_atomic(path.parent / extra.name, lambda tmp, src=extra: os.replace(src, tmp))
        write_atomic(path, proto.SerializeToString())


def _export_torchscript(net: nn.Module, example: Tensor, path: Path, meta: dict[str, str], opset: int) -> None:
    traced = torch.jit.trace(net, (example,), check_trace=False)
    write_atomic(path, lambda tmp: _save_to(tmp, lambda f: torch.jit.save(traced, f, _extra_files=meta)))


def _export_program(net: nn.Module, example: Tensor, path: Path, meta: dict[str, str], opset: int) -> None:
    program = torch.export.export(net, (example,))
    write_atomic(path, lambda tmp: _save_to(tmp, lambda f: torch.export.save(program, f, extra_files=meta)))


def _save_to(tmp: Path, save: Callable[[Any], None]) -> None:
    """Run a saver that takes a file object on the temporary file (the savers check a path's suffix)."""
    with open(tmp, "wb") as f:
        save(f)
