"""What training shows: progress in optimizer steps (done/total, rate), no warnings a user cannot act on."""

from __future__ import annotations

import warnings
from pathlib import Path

from eomt.training import run as engine

from .test_engine import tiny_config

NOISE = ("logging interval", "not writable")


def test_training_shows_steps_done_of_total_and_no_warning(tmp_path: Path, capsys) -> None:
    # 5 batches per epoch and a logging interval of 100: Lightning would warn and never log.
    cfg = tiny_config(tmp_path / "run", "train.max_steps=6", "train.log_every_n_steps=100")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine.train(cfg, progress=True)
    noise = [str(w.message) for w in caught if any(n in str(w.message) for n in NOISE)]
    assert noise == []
    err = capsys.readouterr().err.replace("\r", "\n")
    assert "6/6 steps" in err and "steps/s" in err and "Epoch" not in err
    assert "/-2" not in err
