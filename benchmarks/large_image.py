"""Peak memory and time of `eomt predict` on one large image, per task.

A tiny random EoMT (`tiny` preset at a 640 input, `--queries` queries, the no-object logit pushed
down so that every query passes a threshold of 0) segments one generated photo-like image of
`--size` pixels; each task runs `eomt predict` in a fresh subprocess with `--threshold 0` and
`--top-k` = the query count (the worst case: every query is kept and restored at full size). Peak
memory is the subprocess's peak RSS (`wait4`'s ru_maxrss); a run is stopped when its RSS passes
`--cap-gb` and recorded as "> cap". Prints a table and writes JSON.

    python benchmarks/large_image.py --size 4000 6000 --queries 200
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

import common
from eomt import save_model
from eomt.benchmark import environment_info

TARGET_GB = 1.5  # peak RSS per task at 6000x4000 with a 200-query model (issue 10)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, nargs=2, default=(4000, 6000), metavar=("H", "W"),
                   help="image size (default: 4000 6000)")
    p.add_argument("--queries", type=int, default=200, help="the model's queries (default: 200)")
    p.add_argument("--tasks", default="panoptic,instance,semantic", help="comma-separated tasks")
    p.add_argument("--cap-gb", type=float, default=12.0, help="stop a run whose RSS passes this (default: 12)")
    p.add_argument("--label", default="", help="a note stored with the record (e.g. before / after)")
    p.add_argument("--json", type=Path, default=None,
                   help="default: benchmarks/results/large_image_<H>x<W>_q<queries>.json")
    return p.parse_args(argv)


def make_image(path: Path, size: tuple[int, int]) -> None:
    """A smooth, photo-like RGB picture (low-resolution noise upsampled) written as a JPEG."""
    h, w = size
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 256, (max(1, h // 64), max(1, w // 64), 3), dtype=np.uint8))
    small.resize((w, h), Image.BILINEAR).save(path, quality=90)


def make_model(path: Path, queries: int) -> None:
    cfg = common.build_config("tiny").replace(img_size=(640, 640), num_queries=queries)
    torch.manual_seed(0)
    model = common.build_model(cfg)
    with torch.no_grad():
        model.class_head.bias[-1] = -20.0  # no query prefers no-object: all pass threshold 0
    save_model(model, path)


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measure(cmd: list[str], cap_bytes: float) -> dict[str, Any]:
    """Run `cmd`; its wall time, peak RSS (bytes), exit code, and whether the cap stopped it."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    capped = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # reaps the child, with its rusage
        if pid:
            break
        if not capped and _rss_bytes(proc.pid) > cap_bytes:
            os.kill(proc.pid, signal.SIGKILL)
            capped = True
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    return {"seconds": time.perf_counter() - start, "peak_bytes": usage.ru_maxrss * 1024,
            "returncode": proc.returncode, "capped": capped, "stderr_tail": err[-400:]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tasks = common.parse_list(args.tasks, ("panoptic", "instance", "semantic"), "tasks")
    h, w = args.size
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        image, model = Path(tmp) / "large.jpg", Path(tmp) / "model.safetensors"
        make_image(image, (h, w))
        make_model(model, args.queries)
        for task in tasks:
            cli = "from eomt.cli import main; raise SystemExit(main())"
            cmd = [sys.executable, "-c", cli, "predict", str(image), "--model", str(model),
                   "--out", str(Path(tmp) / f"out_{task}"), "--task", task, "--threshold", "0",
                   "--top-k", str(args.queries), "--vis-threshold", "0"]
            r = measure(cmd, args.cap_gb * 2**30)
            gb = r["peak_bytes"] / 2**30
            rows.append({
                "task": task, "size": f"{h}x{w}", "queries": args.queries, "seconds": r["seconds"],
                "peak_gb": gb, "peak": f"> {args.cap_gb:g} (stopped)" if r["capped"] else f"{gb:.2f}",
                "target": "met" if gb <= TARGET_GB and r["returncode"] == 0 else "not met",
                "returncode": r["returncode"], "capped": r["capped"],
                **({"stderr_tail": r["stderr_tail"]} if r["returncode"] else {}),
            })
            print(f"{task}: {rows[-1]['peak']} GB, {r['seconds']:.1f} s, rc {r['returncode']}", file=sys.stderr)
    print(common.format_table(rows, [("task", "task"), ("size", "H x W"), ("queries", "queries"),
                                     ("seconds", "s"), ("peak", "peak RSS GB"), ("target", f"<= {TARGET_GB} GB")]))
    path = args.json or common.RESULTS_DIR / f"large_image_{h}x{w}_q{args.queries}.json"
    common.write_json(path, {"label": args.label, "target_gb": TARGET_GB, "rows": rows,
                             "environment": environment_info()})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
