"""A smoke run of benchmarks/video_tracking.py on the briefly trained tiny synthetic model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_video_tracking_script_smoke(trained_synthetic_model: tuple[Path, object], tmp_path: Path) -> None:
    path, _ = trained_synthetic_model
    out = tmp_path / "tracking.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "video_tracking.py"), "--image", str(path), "--checkpoints",
         str(path), "--without-propagation", "--videos", "3", "--video-length", "4", "--threads", "1",
         "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,  # a guard against hangs, not a timing assert
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["tracker"] for r in rows] == [f"VidEoMT {path}", "  the same, propagation off",
                                            "image model, query index", "image model + IoU linking (>= 0.5)"]
    assert all(r["ap"] > 0 and r["id_switches"] >= 0 and 0 < r["matched_frames"] <= 100 for r in rows[1:])
    # A VidEoMT whose propagation is zeroed starts every frame from the learned queries: the image
    # model run per frame, so the two rows score alike.
    same = ("ap", "ap50", "ap75", "ar10", "id_switches", "matched_frames")
    assert [rows[1][k] for k in same] == pytest.approx([rows[2][k] for k in same], abs=1e-6)
