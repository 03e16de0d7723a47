"""Clips for VidEoMT training and whole videos for its validation: the data module and its datasets.

`data.dataset` names where the clips come from:
- `synthetic_video` (`eomt.data.video_synthetic.SyntheticVideos`: shapes that move, occlude, enter
  and leave), generated at the model's input size and served as generated (no augmentation); its
  option `num_videos` sizes the training set (default 200), `val_num_videos` the val set (default 64);
- `ytvis` (`eomt.data.ytvis.YouTubeVIS`: a YouTube-VIS JSON and its frames, folder or zip), every
  training clip augmented by `ClipTransform`, the image pipeline's flip / scale jitter / pad / crop
  to the model's input size drawn once per clip and applied alike to its frames and track masks;
- any image dataset of the registry, made into clips by `MovingClips` (the whole scene slides by a
  per-clip velocity), then augmented by `ClipTransform` as ytvis.

Training items are `(clip uint8 (T, 3, S, S), VideoTarget)`; the loader stacks clips into
(B, T, 3, S, S) and keeps a list of the B (masks (N, T, S, S), labels (N,)) tracks, crowd tracks
left out. The order is `ResumableSampler`'s (seeded per epoch, sharded, skipping what a resumed
epoch consumed) and every random draw of an item (its frames, its augmentation) is seeded by (seed,
epoch, index), so a resumed run sees the data the uninterrupted one would have seen. Validation
serves whole videos (`clip_length=None`; `MovingClips` of the val images: clips of T frames) at
their own size, one per batch: the module resizes and pads them as the image predictor does.
"""

from __future__ import annotations

import logging
import zlib
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from eomt.config import ConfigError
from eomt.data.base import ItemCheck
from eomt.data.sources import DatasetError
from eomt.data.transforms import TrainTransform, _chance
from eomt.structures import VideoTarget
from eomt.training.data_module import EoMTDataModule
from eomt.training.loaders import CollateLoaded, ReportingLoader, ResumableSampler, Skipped, TolerantDataset, \
    TrainLoader, load_or_replace

log = logging.getLogger(__name__)

Tracks = tuple[Tensor, Tensor]
SYNTHETIC_TRAIN_VIDEOS = 200  # synthetic_video's training set without a `num_videos` option
SYNTHETIC_VAL_VIDEOS = 64  # and its val set (the registry's size of a synthetic val split)


class MovingClips(Dataset):
    """Clips of `clip_length` frames from the images of `base` (module docstring).

    Image i becomes clip i: the scene slides by a velocity drawn from (seed, i), each axis by an
    integer in [-max_shift, max_shift] pixels per frame, wrapping around the borders (objects leave
    one side and enter the other); segment n is track n. Items are `(clip uint8 (T, 3, H, W),
    VideoTarget)` at the image's size. `class_names`, `stuff_classes`, `num_classes` (and
    `category_ids`) are the base dataset's. Raises ValueError for clip_length < 1 or max_shift < 0.
    """

    def __init__(self, base: Any, clip_length: int, max_shift: int = 4, seed: int = 0) -> None:
        if clip_length < 1 or max_shift < 0:
            raise ValueError(f"MovingClips: clip_length={clip_length} (>= 1), max_shift={max_shift} (>= 0)")
        self.base, self.clip_length, self.max_shift, self.seed = base, clip_length, max_shift, seed
        for key in ("class_names", "stuff_classes", "num_classes", "category_ids"):
            if hasattr(base, key):
                setattr(self, key, getattr(base, key))

    def __len__(self) -> int:
        return len(self.base)

    def item_name(self, index: int) -> str:
        name = getattr(self.base, "item_name", None)
        return name(index) if callable(name) else f"item {index}"

    def __getitem__(self, index: int) -> tuple[Tensor, VideoTarget]:
        image, target = self.base[index]
        rng = np.random.default_rng([self.seed, index])
        dy, dx = (int(v) for v in rng.integers(-self.max_shift, self.max_shift + 1, size=2))
        frame = torch.as_tensor(np.ascontiguousarray(image)).permute(2, 0, 1)  # (3, H, W)
        masks = target.masks.bool()  # (N, H, W)
        steps = range(self.clip_length)
        clip = torch.stack([frame.roll((t * dy, t * dx), dims=(1, 2)) for t in steps])  # (T, 3, H, W)
        tracks = torch.stack([masks.roll((t * dy, t * dx), dims=(1, 2)) for t in steps], dim=1)  # (N, T, H, W)
        n = len(target.labels)
        return clip, VideoTarget(tracks, target.labels.long(), target.is_crowd.bool(), torch.arange(n),
                                 torch.arange(self.clip_length))


class ClipTransform:
    """The image training augmentation (`TrainTransform`) drawn once per clip, applied alike to its
    T frames and its track masks, so a track stays one object: (clip uint8 (T, 3, H, W),
    VideoTarget) -> (clip (T, 3, h, w), VideoTarget) with (h, w) = img_size.

    Colour jitter (optional), horizontal flip, scale jitter in `scale_range`, pad to img_size and a
    random crop, masks resized nearest as images are (never resized alone to fit). Crowd tracks are
    dropped, and tracks empty in every frame after the crop; when none is left the whole transform
    is drawn again, up to `max_retries` times, as for images.
    """

    def __init__(self, img_size: tuple[int, int], scale_range: tuple[float, float] = (0.1, 2.0),
                 color_jitter: bool = False, max_retries: int = 10) -> None:
        # The frame transform's steps run on the clip with the frames stacked as channels: one draw
        # of each random value serves all frames (resizing channels one by one gives the same pixels).
        self.frames = TrainTransform(img_size, scale_range, color_jitter)
        self.max_retries = max_retries

    def __call__(self, clip: Tensor, target: VideoTarget,
                 generator: torch.Generator | None = None) -> tuple[Tensor, VideoTarget]:
        if target.masks.shape[1:] != (clip.shape[0], *clip.shape[-2:]):
            raise ValueError(f"ClipTransform: track masks are {tuple(target.masks.shape[1:])} (T, H, W), "
                             f"expected the clip's {(clip.shape[0], *clip.shape[-2:])}")
        g = generator if generator is not None else torch.Generator().manual_seed(int(torch.randint(0, 2**62, ())))
        keep = ~target.is_crowd.bool()
        masks, labels, ids = target.masks[keep].bool(), target.labels[keep], target.track_ids[keep]
        for attempt in range(self.max_retries + 1):
            out, out_masks = self._once(clip, masks, g)
            alive = out_masks.flatten(1).any(1)  # (N,) tracks still seen in some frame
            if alive.any() or not len(labels):
                break
        return out, VideoTarget(out_masks[alive], labels[alive], torch.zeros(int(alive.sum()), dtype=torch.bool),
                                ids[alive], target.frame_indices)

    def _once(self, clip: Tensor, masks: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
        f, (t, _, h, w), n = self.frames, clip.shape, masks.shape[0]
        if f.color_jitter:
            state = g.get_state()
            frames = []
            for frame in clip:  # the same draws for every frame: one colour change per clip
                g.set_state(state)
                frames.append(f._photometric(frame, g))
            clip = torch.stack(frames)
        flat, flat_masks = clip.reshape(t * 3, h, w), masks.reshape(n * t, h, w)  # frames as channels
        if _chance(0.5, g):
            flat, flat_masks = flat.flip(-1), flat_masks.flip(-1)
        flat, flat_masks = f._scale_jitter(flat, flat_masks, g)
        flat, flat_masks = f._pad_and_crop(flat, flat_masks, g)
        sh, sw = flat.shape[-2:]
        return flat.reshape(t, 3, sh, sw), flat_masks.reshape(n, t, sh, sw)  # (T, 3, h, w), (N, T, h, w)


class SeededClips(Dataset):
    """Training item `(index, epoch)` of `base` as (clip, target, skipped notes): every random draw
    of the item (the frames a video dataset samples from torch's RNG, the `transform`) comes from
    (seed, epoch, index), whatever the worker or a resume. A video whose files fail to load is
    replaced by the next one that loads (`loaders.load_or_replace`)."""

    def __init__(self, base: Any, transform: ClipTransform | None, seed: int) -> None:
        self.base, self.transform, self.seed = base, transform, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, VideoTarget, tuple[Skipped, ...]]:
        index, epoch = key
        seed = int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0])
        with torch.random.fork_rng(devices=[]):  # the global RNG of the process is left as it was
            torch.manual_seed(seed)
            clip, target, skipped = load_or_replace(self.base, index)
        if self.transform is not None:
            clip, target = self.transform(clip, target, generator=torch.Generator().manual_seed(seed))
        return clip, target, skipped


def clip_collate(batch: Sequence[tuple[Tensor, Any]]) -> tuple[Tensor, list[Tracks]]:
    """Items -> (clips (B, T, 3, H, W) uint8, the B (masks (N, T, H, W), labels (N,)) tracks); a
    `VideoTarget` gives its non-crowd tracks, a (masks, labels) tuple is taken as it is."""
    tracks = [(t.masks[~t.is_crowd], t.labels[~t.is_crowd]) if isinstance(t, VideoTarget) else t for _, t in batch]
    return torch.stack([clip for clip, _ in batch]), tracks


def video_eval_collate(batch: Sequence[tuple[Tensor, VideoTarget]]) -> tuple[list[Tensor], list[VideoTarget]]:
    """Whole videos of any length and size: (the clips (T, 3, H, W) uint8, their VideoTargets)."""
    return [clip for clip, _ in batch], [target for _, target in batch]


class YouTubeVISCheck:
    """The data check's view of a `eomt.data.ytvis.YouTubeVIS` set (`preflight`, `eomt.data.check`):
    item i is video i, checked as images are (every frame present, its header readable, decoded
    too with `read_images`, of the video's height and width), with its tracks' classes counted;
    annotation problems are the set's `index_errors`. Its sources and JSON key the check's cache."""

    def __init__(self, videos: Any) -> None:
        self.videos, self.images, self.json_name = videos, videos.images, videos.json_name
        self.class_names, self.stuff_classes = videos.class_names, videos.stuff_classes
        self.index_errors = videos.index_errors

    def __len__(self) -> int:
        return len(self.videos)

    def check_item(self, index: int, read_images: bool = True) -> ItemCheck:
        """The frames of video `index` and its tracks' labels (`ItemCheck`)."""
        out, v = ItemCheck(), self.videos.videos[index]
        for name in v["file_names"]:
            member = self.videos.prefix + name
            try:
                size = self.images.image_frame(member, decode=read_images).size
            except DatasetError as e:
                out.errors.append(str(e))
                continue
            if size != (v["height"], v["width"]):
                out.errors.append(f"{self.images.where(member)}: size {size} (H, W), expected "
                                  f"{(v['height'], v['width'])} as the video's in {self.json_name}")
        out.labels = np.array([track[1] for track in self.videos.tracks[index]], dtype=np.int64)
        if not len(out.labels):
            out.warnings.append(f"{self.videos.item_name(index)}: no tracks")
        return out


class VideoDataModule(EoMTDataModule):
    """The training clips and validation videos of a `DataConfig` with `clip_length` T >= 1.

    The datasets come from the registry (`eomt.data.registry`) as for image training, with the
    same per-split options (`<split>_<key>`, `EoMTDataModule.options`) and the same reports of
    files that fail to load; `data.options.max_shift` (default 4) sets the motion of `MovingClips`.
    """

    def build(self, split: str, clip_length: int | None = None) -> Any:
        """The dataset of `split`: clips of `clip_length` frames, or whole videos (None)."""
        options, name = self.options(split), self.data_cfg.dataset
        if name == "synthetic_video":
            from eomt.data.video_synthetic import SyntheticVideos

            if split == self.data_cfg.train_split:
                options.setdefault("num_videos", SYNTHETIC_TRAIN_VIDEOS)
            elif f"{split}_num_videos" not in self.data_cfg.kwargs:
                # A plain `num_videos` sizes the training set (synthetic/video: 2000); validating that
                # many whole videos would cost more than the training epoch itself.
                options["num_videos"] = SYNTHETIC_VAL_VIDEOS
            options.setdefault("seed", zlib.crc32(split.encode()) % 2**31)
            try:
                return SyntheticVideos(size=self.img_size, clip_length=clip_length, task=self.task, **options)
            except TypeError as e:  # an option SyntheticVideos does not take
                raise ConfigError(f"data.options: {e} (dataset synthetic_video)") from None
        from eomt.data.registry import build_dataset

        if name == "ytvis":
            return build_dataset(name, root=self.data_cfg.root, split=split, task=self.task,
                                 clip_length=clip_length, **options)
        max_shift = int(options.pop("max_shift", 4))
        base = build_dataset(name, root=self.data_cfg.root, split=split, task=self.task, **options)
        return MovingClips(base, self.data_cfg.clip_length, max_shift, self.seed)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self.build(self.data_cfg.train_split, self.data_cfg.clip_length)
            log.info("training clips: %d videos, clips of %d frames, from %s", len(self.train_set),
                     self.data_cfg.clip_length, self.data_cfg.dataset)
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = self.build(self.data_cfg.val_split, None)

    @staticmethod
    def check_set(dataset: Any) -> Any:
        """What the data check reads for `dataset`: a YouTube-VIS set's frames and tracks
        (`YouTubeVISCheck`), the images under `MovingClips`; generated videos (nothing to read)
        as they are."""
        from eomt.data.ytvis import YouTubeVIS

        if isinstance(dataset, YouTubeVIS):
            return YouTubeVISCheck(dataset)
        return dataset.base if isinstance(dataset, MovingClips) else dataset

    def train_dataloader(self) -> DataLoader:
        sampler = ResumableSampler.for_trainer(self.trainer, len(self.train_set), self.data_cfg.batch_size, self.seed)
        d = self.data_cfg
        transform = None if d.dataset == "synthetic_video" else ClipTransform(
            self.img_size, d.scale_range, d.color_jitter)
        return TrainLoader(
            SeededClips(self.train_set, transform, self.seed), batch_size=d.batch_size, sampler=sampler,
            num_workers=d.num_workers, collate_fn=CollateLoaded(clip_collate), drop_last=True,
            on_skipped=lambda notes: self.report_skipped("train", notes), persistent_workers=False,
            pin_memory=self.trainer is not None and self.trainer.strategy.root_device.type == "cuda",
            generator=torch.Generator().manual_seed(self.seed),
        )

    def val_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        return ReportingLoader(
            TolerantDataset(self.val_set), batch_size=1,  # whole videos, of any length and size
            sampler=list(range(rank, len(self.val_set), world)),  # each process its shard; evaluators reduce
            num_workers=self.data_cfg.num_workers, collate_fn=CollateLoaded(video_eval_collate),
            on_skipped=lambda notes: self.report_skipped("val", notes),
        )

