"""`eomt data check` and training on a user's own dataset through the CLI, with no code."""

from pathlib import Path

import pytest

from eomt.checkpoints import load_model
from eomt.cli import main
from tests.data.fixtures import write_semantic_folder

ROOT = Path(__file__).resolve().parents[1]


def _options(root: Path) -> list[str]:
    return ["--root", str(root), "--split", "x", "--option", "images=images", "--option", "labels=labels"]


def test_data_check_reports_ok_then_names_the_missing_label(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_semantic_folder(tmp_path)
    assert main(["data", "check", "semantic_folder", *_options(tmp_path)]) == 0
    (tmp_path / "labels" / "img1.png").unlink()
    assert main(["data", "check", "semantic_folder", *_options(tmp_path)]) == 1
    assert "img1.png" in capsys.readouterr().out


def test_train_on_a_semantic_folder_takes_the_label_space_from_the_data(tmp_path: Path) -> None:
    write_semantic_folder(tmp_path, names=("sky", "road", "car"))
    out = tmp_path / "run"
    args = [
        "train", str(ROOT / "configs/custom/semantic_folder.yaml"), "--no-progress",
        f"data.root={tmp_path}", "data.train_split=x", "data.val_split=x",
        "data.options={x_images: images, x_labels: labels}", "data.batch_size=1", "data.num_workers=0",
        "model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.num_blocks=1",
        "model.img_size=[64,64]", "model.num_queries=4", "train.max_steps=2", "train.num_points=64",
        "train.precision=32-true", "train.threads=1", f"train.out_dir={out}",
    ]
    assert main(args) == 0
    model = load_model(out / "model.safetensors")
    assert model.config.class_names == ("sky", "road", "car") and model.config.task == "semantic"
