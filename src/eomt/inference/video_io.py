"""Reading video files as RGB frames, and writing annotated videos atomically.

The library is PyAV (`av`, the `video` extra), chosen by measurement (`benchmarks/video_decode.py`,
numbers in benchmarks/RESULTS.md) among the three that install as wheels with FFmpeg inside:

- PyAV: 36 MB wheel, FFmpeg's libraries in-process; ~520 frames/s decoding 640x480 H.264 to RGB on
  this loaded 2-core machine; writes H.264 (libx264), MPEG-4, VP9 and AV1; errors are Python
  exceptions with FFmpeg's reason, and FFmpeg's own log is silent by default.
- OpenCV (`opencv-python-headless`): 61 MB; fastest decoder (~890 frames/s) but writes no H.264
  (only MPEG-4 Part 2 and VP9 in the wheel), reports an unreadable file as a bare `False` and
  prints FFmpeg errors on stderr that a user cannot act on.
- imageio-ffmpeg: 68 MB; pipes raw frames from an ffmpeg process (~360 frames/s), writes what
  ffmpeg writes; errors come as ffmpeg's stderr text.

Decoding costs 1-3 ms a frame with any of them, against tens to hundreds of ms for the network on a
CPU, so speed does not decide; PyAV gives H.264 output that every player opens, clean errors and
the smallest install.

Frames are (3, H, W) uint8 RGB tensors, as `eomt.inference.io.read_image` gives images. `stride`
keeps every stride-th frame (0, s, 2s, ...; the others are decoded, as inter frames need, but not
converted) and `max_frames` stops after that many kept frames. A file FFmpeg cannot open, without a
video stream, or that fails while decoding raises `VideoReadError`, one line naming the file.
The rotation a phone may store beside the stream (display matrix) is not applied.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor

from eomt import files
from eomt.errors import MissingFileError, OptionError
from eomt.images import ImageReadError

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
# Encoders tried in order for written videos: H.264 plays everywhere; MPEG-4 Part 2 is in every FFmpeg.
ENCODERS = ("libx264", "mpeg4")
_FORMATS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi"}


class VideoReadError(ImageReadError):
    """A video file that cannot be opened or decoded; the message names the file and the reason."""


def _av() -> Any:
    """The `av` module, or an OptionError saying how to install it."""
    try:
        import av
    except ImportError:
        raise OptionError("video files need PyAV: pip install 'eomt[video]' (or: pip install av)") from None
    return av


def is_video(path: str | Path) -> bool:
    """Whether a path names a video file by its suffix (`VIDEO_EXTENSIONS`, any case)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def _reason(e: BaseException, path: Path) -> str:
    """FFmpeg's reason, without the errno and file name it repeats ("[Errno 1094995529] Invalid
    data found when processing input: 'x.mp4'")."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    text = text.split("] ", 1)[-1] if text.startswith("[Errno") else text
    return text.removesuffix(f": '{path}'")


@dataclass(frozen=True)
class VideoInfo:
    """What the container says of a video: `rate` frames per second (exact fraction), `frame_count`
    (the stream's count, else its duration x rate as Matroska and WebM give; None when the container
    says neither), frame `height` x `width` in pixels, `codec` name. A file cut short still announces
    the full count: fewer frames decode (`eomt predict` warns)."""

    path: Path
    rate: Fraction
    frame_count: int | None
    height: int
    width: int
    codec: str

    @property
    def fps(self) -> float:
        """Frames per second as a float."""
        return float(self.rate)

    def kept_frames(self, stride: int = 1, max_frames: int | None = None) -> int | None:
        """How many frames `read_frames(stride, max_frames)` yields, if the frame count is known."""
        if self.frame_count is None:
            return max_frames
        kept = -(-self.frame_count // stride)  # ceil: frames 0, s, 2s, ...
        return kept if max_frames is None else min(kept, max_frames)


def _frame_count(container: Any, stream: Any, rate: Fraction) -> int | None:
    """The frames a container announces: the stream's frame count (MP4, MOV), else its duration
    (stream or container, e.g. Matroska's header) x `rate`, rounded; None when it says neither."""
    if int(stream.frames or 0) > 0:
        return int(stream.frames)
    if stream.duration and stream.time_base:
        seconds = stream.duration * stream.time_base
    elif container.duration:
        seconds = Fraction(container.duration, 1_000_000)  # AV_TIME_BASE: microseconds
    else:
        return None
    return round(seconds * rate) or None


class VideoReader:
    """An open video file: `info`, then `read_frames` (once). Use as a context manager or `close()`.

    Raises MissingFileError for a missing file and VideoReadError for one FFmpeg cannot open or
    without a video stream.
    """

    def __init__(self, path: str | Path) -> None:
        av = _av()
        self.path = Path(path)
        if not self.path.is_file():
            raise MissingFileError(f"{self.path}: no such video file")
        try:
            self._container = av.open(str(self.path))
        except (av.error.FFmpegError, OSError, ValueError) as e:
            raise VideoReadError(f"{self.path}: cannot read video: {_reason(e, self.path)}") from None
        if not self._container.streams.video:
            self._container.close()
            raise VideoReadError(f"{self.path}: cannot read video: no video stream in the file")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"  # frame and slice threads: ~1.5x on two cores
        s = self._stream
        rate = s.average_rate or s.guessed_rate or s.base_rate or Fraction(25)
        self.info = VideoInfo(self.path, Fraction(rate), _frame_count(self._container, s, Fraction(rate)),
                              int(s.height), int(s.width), s.codec_context.name)

    def read_frames(self, stride: int = 1, max_frames: int | None = None) -> Iterator[tuple[int, Tensor]]:
        """(source frame index, RGB uint8 (3, H, W)) for frames 0, stride, 2*stride, ... in order,
        at most `max_frames` of them. Raises VideoReadError if decoding fails part way."""
        av = _av()
        if stride < 1:
            raise OptionError(f"stride: {stride} must be >= 1")
        if max_frames is not None and max_frames < 1:
            raise OptionError(f"max_frames: {max_frames} must be >= 1 (or None: all frames)")
        kept = 0
        try:
            for index, frame in enumerate(self._container.decode(self._stream)):
                if index % stride:
                    continue
                rgb = torch.from_numpy(frame.to_ndarray(format="rgb24"))  # (H, W, 3)
                yield index, rgb.permute(2, 0, 1)  # (3, H, W), a view
                kept += 1
                if max_frames is not None and kept >= max_frames:
                    return
        except (av.error.FFmpegError, OSError, ValueError) as e:
            reason = _reason(e, self.path)
            raise VideoReadError(f"{self.path}: cannot decode video after {kept} frame(s): {reason}") from None

    def close(self) -> None:
        """Release the file."""
        self._container.close()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def probe_video(path: str | Path) -> VideoInfo:
    """The `VideoInfo` of a video file, without decoding frames (errors: `VideoReader`)."""
    with VideoReader(path) as reader:
        return reader.info


def read_frames(path: str | Path, stride: int = 1, max_frames: int | None = None) -> Iterator[tuple[int, Tensor]]:
    """(source frame index, RGB uint8 (3, H, W)) of a video file; see `VideoReader.read_frames`."""
    with VideoReader(path) as reader:
        yield from reader.read_frames(stride, max_frames)


def pick_encoder(preferred: tuple[str, ...] = ENCODERS) -> str:
    """The first of `preferred` that this FFmpeg build can write (OptionError if none)."""
    av = _av()
    for name in preferred:
        with contextlib.suppress(Exception):  # an encoder the build lacks: av raises its own error type
            av.codec.Codec(name, "w")
            return name
    raise OptionError(f"video encoder: none of {', '.join(preferred)} is in this PyAV build")


class VideoWriter:
    """Write RGB frames to a video file atomically: the frames go to a temporary file beside `path`,
    renamed to `path` by `close()`; an exception inside the `with` block removes it instead.

    rate: frames per second of the written video; encoder: an FFmpeg encoder name (default: the
    first of `ENCODERS` available). The container follows the suffix of `path` (.mp4 .mov .mkv
    .webm .avi). Every frame must have the size of the first; odd sizes are padded by one black
    row / column (4:2:0 colour needs even sizes).
    """

    def __init__(self, path: str | Path, rate: Fraction | float, encoder: str | None = None) -> None:
        self.av = _av()
        self.path = Path(path)
        fmt = _FORMATS.get(self.path.suffix.lower())
        if fmt is None:
            raise OptionError(f"{self.path}: cannot write a video with suffix {self.path.suffix!r} "
                              f"(expected one of: {', '.join(_FORMATS)})")
        self.rate = Fraction(rate).limit_denominator(1001)  # 30000/1001 and friends stay exact
        self.encoder = encoder or pick_encoder()
        self._files = contextlib.ExitStack()
        tmp = self._files.enter_context(files.atomic_path(self.path))
        self._container = self.av.open(str(tmp), "w", format=fmt)
        self._stream: Any = None
        self.frames = 0

    def write(self, frame: np.ndarray | Tensor) -> None:
        """Append one frame: RGB uint8, (H, W, 3) array or (3, H, W) tensor."""
        if isinstance(frame, Tensor):
            frame = frame.permute(1, 2, 0).cpu().numpy()
        h, w = frame.shape[:2]
        if self._stream is None:
            self._stream = self._container.add_stream(self.encoder, rate=self.rate)
            self._stream.height, self._stream.width = h + h % 2, w + w % 2
            self._stream.pix_fmt = "yuv420p"
        size = (self._stream.height, self._stream.width)
        if (h + h % 2, w + w % 2) != size:
            raise ValueError(f"{self.path}: frame {self.frames} is {h} x {w}; the video is {size[0]} x {size[1]}")
        if (h, w) != size:
            frame = np.pad(frame, ((0, size[0] - h), (0, size[1] - w), (0, 0)))  # black row / column
        picture = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        self._container.mux(self._stream.encode(picture))
        self.frames += 1

    def close(self) -> Path:
        """Flush the encoder and put the file in place; returns its path. Raises ValueError (and
        writes nothing) when no frame was written: a video has at least one."""
        if self._stream is None:
            self.abort()
            raise ValueError(f"{self.path}: no frame written; the video is not created")
        self._container.mux(self._stream.encode(None))  # the frames the encoder still holds
        self._container.close()
        self._files.close()  # the rename
        return self.path

    def abort(self) -> None:
        """Drop the partial file."""
        with contextlib.suppress(Exception):
            self._container.close()
        self._files.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


__all__ = ["VIDEO_EXTENSIONS", "VideoInfo", "VideoReadError", "VideoReader", "VideoWriter", "is_video",
           "pick_encoder", "probe_video", "read_frames"]
