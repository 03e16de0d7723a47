"""`Predictor`: images in, per-image results out (panoptic, instance or semantic).

    predictor = Predictor("tue-mps/coco_panoptic_eomt_large_640", device="cuda", dtype="bf16")
    results = predictor(["a.jpg", "b.png"])  # list[PanopticResult]

Panoptic and instance inputs are resized (longer side) and padded to the model's input size;
semantic inputs are cut into square sliding windows (shorter side to the crop size), as in the
official evaluation. Any image size and aspect ratio works. With `tile=SIZE`, large images are
cut into overlapping tiles at their own scale instead and the tile results joined
(`eomt.inference.tiling`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
from pathlib import Path
from typing import Iterator, Sequence, Union, overload

import torch
from torch import Tensor

from eomt.config import TASKS, precision
from eomt.errors import OptionError
from eomt.inference import postprocess
from eomt.inference.exported import EXPORTED_SUFFIXES
from eomt.inference.io import DEFAULT_MAX_PIXELS, ImageInput, load_image
from eomt.inference.preprocess import resize_and_pad, sliding_windows
from eomt.inference.restore import Workspace
from eomt.inference.tiling import predict_tiled
from eomt.models import EoMT
from eomt.models.merging import TokenMerging, with_token_merging
from eomt.structures import InstanceResult, PanopticResult, SemanticResult

log = logging.getLogger(__name__)

Result = Union[PanopticResult, InstanceResult, SemanticResult]
# Predictor's dtype names -> the compute dtype, from the one precision table (eomt.config.precision).
DTYPES = {name: precision.by_predictor(name).torch_dtype for name in precision.PREDICTOR_NAMES}


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch device from a name, checking that CUDA is there when asked for."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise OptionError(f"device: unknown device {device!r} (expected cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"device: {device!r} requested but CUDA is not available on this machine")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The autocast dtype of `fp32` / `bf16` / `fp16` / `int8` (fp32 around its int8 layers);
    fp16 needs a CUDA device, int8 the CPU."""
    if dtype not in DTYPES:
        raise OptionError(f"dtype: unknown value {dtype!r} (expected one of: {', '.join(DTYPES)})")
    if dtype == "fp16" and device.type != "cuda":
        raise OptionError(
            f"dtype: fp16 needs a CUDA device (got device {str(device)!r}); use bf16 or fp32 on CPU"
        )
    if precision.by_predictor(dtype).int8 and device.type != "cpu":
        raise OptionError(f"dtype: int8 runs on the CPU only (got device {str(device)!r}); use bf16 or fp16 on a GPU")
    return DTYPES[dtype]


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_options(*, threshold: float | None, mask_threshold: float, overlap_threshold: float, top_k: int,
                  compile: bool | str) -> None:
    """ValueError naming the first `Predictor` option out of its range (before a model is loaded)."""
    for name, value in {"threshold": threshold, "mask_threshold": mask_threshold,
                        "overlap_threshold": overlap_threshold}.items():
        if value is not None and not 0.0 <= value <= 1.0:
            raise OptionError(f"{name}: {value:g} is not a score; expected a number in [0, 1]")
    if top_k < 1:
        raise OptionError(f"top_k: {top_k} must be at least 1")
    if isinstance(compile, str) and compile not in COMPILE_MODES:
        raise OptionError(f"compile: unknown mode {compile!r} (expected True, False or one of: {', '.join(COMPILE_MODES)})")


class Predictor:
    """Run an EoMT model on images of any size and post-process the outputs.

    model: an `EoMT`, any source `eomt.checkpoints.load_pretrained` accepts (file, folder, hub name, preset), or a
    network exported by `eomt export` (.onnx run with onnxruntime, .pt2, .ts) at a fixed input size.
    task: "panoptic" | "instance" | "semantic"; defaults to the model's own task.
    dtype: "fp32"; "bf16": weights and activations in bf16 (the model is converted; a model passed
    in is copied first, so the caller's stays as it was); "fp16": autocast, CUDA only; "int8": the
    ViT's linear layers in int8 (dynamic quantisation, no calibration; `eomt.inference.quantize`),
    CPU only, eager only, on a copy of a model passed in.
    Post-processing is fp32.
    threshold: panoptic class-score threshold (default 0.8), or the instance score below which
    instances are dropped (default 0.0: keep the top-k, as the evaluation does). Instance results
    of a model with stuff classes (a panoptic model) hold things only: stuff is never an instance.
    compile: False, True (torch.compile, fullgraph) or a torch.compile mode such as "max-autotune"
    (on CUDA it also replays the forward as a CUDA graph) or "reduce-overhead". Inputs are padded
    to the model's input size, so one compiled graph serves every image size; the first call
    compiles.
    tile: cut each image into overlapping `tile x tile` pixel tiles, predicted at the image's own
    scale (as any image, each goes through the usual preprocessing: no resize when `tile` is the
    model's input size) and joined at the original size: things crossing a seam become one
    segment, semantic scores are blended (the rule: `eomt.inference.tiling`). For large images
    whose objects would vanish if the image were shrunk (slides, aerial photos, scans). None: the
    whole image is resized to the input size. tile_overlap: pixels shared by neighbouring tiles
    (default `tile // 4`); more gives the network more context at each seam, at the cost of more
    tiles.
    trust_pickle: let a file given by name run code on load (pickled objects, a .ts TorchScript
    file); only for files whose source you trust. Without it such a file is refused.
    token_merging: ALGM token merging in the network (`eomt.models.merging`): None/False off, True
    the defaults (tau 0.88), a float tau, or a `TokenMerging`. Fewer FLOPs on images with large
    uniform regions; masks and post-processing unchanged. Needs an annealed EoMT (not an exported
    graph); a model passed in is not changed (a shallow copy carries the setting).
    max_pixels: image files announcing more pixels are refused before decoding (a decompression
    bomb guard, `eomt.inference.io.DEFAULT_MAX_PIXELS`); None: no limit.
    mask_format: instance masks as a bool tensor ("dense"), as `eomt.structures.RLEMasks` ("rle",
    COCO run-length encodings made one mask at a time) or "auto": dense unless the (N, H, W) stack
    would pass 256 MB (`postprocess.DENSE_MASK_BYTES`). `RLEMasks` index and iterate like the
    tensor; `.to_dense()` gives the tensor.
    """

    def __init__(
        self,
        model: EoMT | str | Path,
        task: str | None = None,
        device: str | torch.device = "cpu",
        dtype: str = "fp32",
        batch_size: int = 1,
        threshold: float | None = None,
        mask_threshold: float = 0.5,
        overlap_threshold: float = 0.8,
        top_k: int = 100,
        compile: bool | str = False,
        tile: int | None = None,
        tile_overlap: int | None = None,
        trust_pickle: bool = False,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        mask_format: str = "auto",
        token_merging: TokenMerging | bool | float | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.autocast_dtype = resolve_dtype(dtype, self.device)
        check_options(threshold=threshold, mask_threshold=mask_threshold,
                      overlap_threshold=overlap_threshold, top_k=top_k, compile=compile)
        callers = isinstance(model, EoMT)
        name = str(model) if isinstance(model, (str, Path)) else "model"
        if isinstance(model, (str, Path)) and Path(model).suffix in EXPORTED_SUFFIXES:
            from eomt.inference.exported import load_exported

            model = load_exported(model, trust_pickle=trust_pickle)
        elif not callers and not hasattr(model, "input_shape"):
            from eomt.checkpoints import load_pretrained

            model = load_pretrained(model, trust_pickle=trust_pickle)
        if not callers and isinstance(model, EoMT) and model.masked_attention_active:
            # As `eval` warns: an unfinished run's masks are drawn at random (0 < p < 1). A network
            # passed in (training's validation builds a Predictor per batch) is its caller's business.
            log.warning("%s: masked attention is not fully annealed (attn_mask_probs %s); predicting with "
                        "it, results may change from run to run", name,
                        [round(p, 4) for p in model.attn_mask_probs.tolist()])
        if isinstance(model, EoMT) and self.autocast_dtype == torch.bfloat16:
            # bf16 weights and activations instead of autocast: no per-call casts, and the fused
            # bf16 CPU kernels apply. A model passed in is copied: the caller's keeps its dtype.
            model = (copy.deepcopy(model) if callers else model).to(torch.bfloat16)
            self.autocast_dtype = torch.float32
        if precision.by_predictor(dtype).int8:
            if compile:
                raise OptionError("compile: int8 runs eager (its kernels are not compiled); "
                                  "drop --compile or use fp32/bf16")
            from eomt.inference.quantize import to_int8

            model = to_int8(model, copy_model=callers)  # a model passed in keeps its fp32 layers
        model = with_token_merging(model, token_merging, copy_model=callers)
        self.model = model.to(self.device).eval()
        self.config = model.config
        self._network = self.model
        if compile:
            if not isinstance(self.model, EoMT):
                raise OptionError("compile: only an EoMT network can be compiled, not an exported graph")
            mode = None if compile is True or compile == "default" else str(compile)
            # Merging counts tokens on the host: the graph breaks there, so no fullgraph with it.
            fullgraph = self.model.token_merging is None
            self._network = torch.compile(self.model, fullgraph=fullgraph, mode=mode)
        # An exported graph has a fixed input size, which may differ from the training size.
        self.input_size: tuple[int, int] = tuple(getattr(model, "img_size", self.config.img_size))  # type: ignore[assignment]
        self.task = task or self.config.task
        if self.task not in TASKS:
            raise OptionError(f"task: unknown value {self.task!r} (expected one of: {', '.join(TASKS)})")
        if batch_size < 1:
            raise OptionError(f"batch_size: {batch_size} must be >= 1")
        self.batch_size = batch_size
        default = 0.8 if self.task == "panoptic" else 0.0
        self.threshold = default if threshold is None else float(threshold)
        self.mask_threshold = mask_threshold
        self.overlap_threshold = overlap_threshold
        self.top_k = top_k
        if tile is not None and tile < 1:
            raise OptionError(f"tile: {tile} must be >= 1 pixel (or None: no tiling)")
        if tile is None and tile_overlap is not None:
            raise OptionError(f"tile_overlap: {tile_overlap} has no effect without tile=SIZE")
        overlap = (tile // 4 if tile else 0) if tile_overlap is None else tile_overlap
        if tile is not None and not 0 <= overlap < tile:
            raise OptionError(f"tile_overlap: {overlap} must be >= 0 and smaller than the tile ({tile})")
        self.tile, self.tile_overlap = tile, overlap
        self.max_pixels = max_pixels
        postprocess.check_mask_format(mask_format)
        self.mask_format = mask_format
        # Buffers of the restored logits, reused from call to call (`eomt.inference.restore`).
        self.workspace = Workspace()

    @property
    def class_names(self) -> tuple[str, ...]:
        """The model's class names, or `class i` when the checkpoint carries none."""
        cfg = self.config
        return cfg.class_names or tuple(f"class {i}" for i in range(cfg.num_classes))

    @overload
    def __call__(self, images: ImageInput) -> Result: ...

    @overload
    def __call__(self, images: Sequence[ImageInput]) -> list[Result]: ...

    def __call__(self, images: ImageInput | Sequence[ImageInput]) -> Result | list[Result]:
        """The result of one image (a path, PIL image, array or tensor), or a list of results for a
        list (or tuple) of images, in input order."""
        if isinstance(images, (str, Path)) or not isinstance(images, Sequence):
            return self.predict_one(images)  # a tensor or array is one image, not a list of rows
        return [result for _, result in self.iter_predict(images)]

    def predict_one(self, image: ImageInput) -> Result:
        """The result of a single image."""
        return next(self.iter_predict([image]))[1]

    def iter_predict(self, images: Sequence[ImageInput]) -> Iterator[tuple[Tensor, Result]]:
        """(loaded image (3, H, W), result) pairs, batch after batch, in input order."""
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            tensors = [load_image(im, f"images[{start + j}]", self.max_pixels) for j, im in enumerate(chunk)]
            yield from zip(tensors, self.predict_tensors(tensors))

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    @torch.inference_mode()
    def predict_tensors(self, images: Sequence[Tensor]) -> list[Result]:
        """Results for already loaded images, each (3, H, W) uint8 or float in [0, 1]."""
        images = [im.to(self.device) for im in images]
        if self.tile is not None:
            run = functools.partial(self._predict_untiled, semantic_scores=True)
            return [
                predict_tiled(image, run, self.task, self.tile, self.tile_overlap, self.batch_size,
                              self.config.stuff_classes, self.top_k, mask_format=self.mask_format)
                for image in images
            ]
        return self._predict_untiled(images)

    def _predict_untiled(self, images: Sequence[Tensor], semantic_scores: bool = False) -> list[Result]:
        """Results for images on the device, each resized (or windowed) whole to the input size."""
        if self.task == "semantic":
            crop = min(self.input_size)
            x, windows = sliding_windows(images, crop)  # (N, 3, S, S)
            with self._autocast():
                out = self._network(x)
            return list(postprocess.semantic(out.mask_logits, out.class_logits, windows,
                                             return_scores=semantic_scores))
        x, metas = resize_and_pad(images, self.input_size)  # (B, 3, S_h, S_w)
        with self._autocast():
            out = self._network(x)
        if self.task == "panoptic":
            return list(
                postprocess.panoptic(
                    out.mask_logits,
                    out.class_logits,
                    metas,
                    self.config.stuff_classes,
                    threshold=self.threshold,
                    mask_threshold=self.mask_threshold,
                    overlap_threshold=self.overlap_threshold,
                    workspace=self.workspace,
                )
            )
        return list(
            postprocess.instance(out.mask_logits, out.class_logits, metas, self.top_k, self.threshold,
                                 mask_format="dense" if self.tile is not None else self.mask_format,
                                 workspace=self.workspace, stuff_classes=self.config.stuff_classes)
        )
