"""Video libraries compared for `eomt predict` on video files: decode speed and what each can write.

Candidates: PyAV (`av`, FFmpeg's libraries bundled in the wheel), imageio-ffmpeg (an ffmpeg binary
in the wheel, frames piped as raw RGB) and OpenCV (`opencv-python-headless`, its own FFmpeg build).
One test clip (moving shapes, H x W, N frames, H.264 via PyAV's libx264, else MPEG-4 Part 2) is
decoded to RGB uint8 (H, W, 3) arrays by each library in turn, round after round (A, B, C, A, B, C...),
so that the load of a shared machine falls on all of them alike; the median per library is reported.
Then each library tries to write a short clip with each codec, and the file is read back.

    python benchmarks/video_decode.py --size 480 640 --frames 150 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
CODECS = ("libx264", "h264", "mpeg4", "libvpx-vp9", "libsvtav1")


def make_frames(n: int, h: int, w: int) -> np.ndarray:
    """(n, h, w, 3) uint8: a gradient with two squares moving across, so the encoder has work to do."""
    t = np.arange(n)[:, None, None]
    y, x = np.mgrid[0:h, 0:w]
    base = ((x[None] + 2 * t) % 256).astype(np.uint8)  # (n, h, w)
    frames = np.stack([base, np.broadcast_to(y[None] % 256, base.shape), 255 - base], -1).astype(np.uint8)
    for i in range(n):
        s = h // 5
        x0, y0 = (7 * i) % (w - s), (3 * i) % (h - s)
        frames[i, y0 : y0 + s, x0 : x0 + s] = (240, 40, 40)
        frames[i, h - s - y0 : h - y0, w - s - x0 : w - x0] = (30, 200, 60)
    return frames


def write_pyav(path: Path, frames: np.ndarray, codec: str, fps: int = 25) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode(None))


def write_imageio(path: Path, frames: np.ndarray, codec: str, fps: int = 25) -> None:
    import imageio_ffmpeg

    gen = imageio_ffmpeg.write_frames(str(path), frames.shape[2:0:-1], fps=fps, codec=codec, macro_block_size=1,
                                      ffmpeg_log_level="error")
    gen.send(None)
    for f in frames:
        gen.send(np.ascontiguousarray(f))
    gen.close()


def write_opencv(path: Path, frames: np.ndarray, codec: str, fps: int = 25) -> None:
    import cv2

    fourcc = {"libx264": "avc1", "h264": "H264", "mpeg4": "mp4v", "libvpx-vp9": "VP90", "libsvtav1": "AV01"}[codec]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, frames.shape[2:0:-1])
    if not writer.isOpened():
        raise RuntimeError(f"cv2.VideoWriter refused fourcc {fourcc}")
    for f in frames:
        writer.write(np.ascontiguousarray(f[..., ::-1]))
    writer.release()


def decode_pyav(path: Path) -> int:
    import av

    n = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            frame.to_ndarray(format="rgb24")
            n += 1
    return n


def decode_imageio(path: Path) -> int:
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = next(gen)
    h_w = meta["size"][::-1]
    n = 0
    for buf in gen:
        np.frombuffer(buf, np.uint8).reshape(*h_w, 3)
        n += 1
    return n


def decode_opencv(path: Path) -> int:
    import cv2

    cap = cv2.VideoCapture(str(path))
    n = 0
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        n += 1
    cap.release()
    return n


LIBRARIES: dict[str, tuple[Callable[[Path], int], Callable[..., None]]] = {
    "pyav": (decode_pyav, write_pyav),
    "imageio-ffmpeg": (decode_imageio, write_imageio),
    "opencv": (decode_opencv, write_opencv),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    p.add_argument("--frames", type=int, default=150)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path, default=RESULTS / "video_decode.json")
    args = p.parse_args()
    h, w = args.size
    frames = make_frames(args.frames, h, w)
    record: dict = {"size": [h, w], "frames": args.frames, "decode_fps": {}, "encode": {}}
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        try:
            write_pyav(clip, frames, "libx264")
            record["clip_codec"] = "h264 (libx264)"
        except Exception:  # noqa: BLE001 - a build without libx264: the always-present encoder
            write_pyav(clip, frames, "mpeg4")
            record["clip_codec"] = "mpeg4"
        times: dict[str, list[float]] = {name: [] for name in LIBRARIES}
        for _ in range(args.rounds):
            for name, (decode, _) in LIBRARIES.items():
                start = time.perf_counter()
                n = decode(clip)
                times[name].append(time.perf_counter() - start)
                if n != args.frames:
                    raise SystemExit(f"{name}: decoded {n} frames, expected {args.frames}")
        for name, ts in times.items():
            record["decode_fps"][name] = round(args.frames / statistics.median(ts), 1)
        for name, (decode, write) in LIBRARIES.items():
            record["encode"][name] = {}
            for codec in CODECS:
                out = Path(tmp) / f"{name}_{codec}.mp4"
                try:
                    write(out, frames[:10], codec)
                    ok = decode_pyav(out) == 10
                except Exception as e:  # noqa: BLE001 - recorded as "cannot write"
                    ok = False
                    log = str(e).splitlines()[0][:60] if str(e) else type(e).__name__
                    record["encode"][name][f"{codec}_error"] = log
                record["encode"][name][codec] = ok
    print(f"decode, {record['clip_codec']} {w}x{h}, {args.frames} frames, median of {args.rounds} rounds:")
    print(f"{'library':<16}{'frames/s':>10}   writes (read back: 10 frames)")
    for name in LIBRARIES:
        codecs = ", ".join(c for c in CODECS if record["encode"][name][c]) or "none"
        print(f"{name:<16}{record['decode_fps'][name]:>10}   {codecs}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
