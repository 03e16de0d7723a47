"""How a config argument finds its YAML: a file, a bundled config by name or checkout path, a preset."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from eomt.cli import main
from eomt.commands.configs import format_listing
from eomt.commands.data import _spec
from eomt.config import DINOV2_PRESET_NAMES, DINOV3_PRESET_NAMES, PRESET_NAMES, ConfigError, load_experiment, preset
from eomt.config_files import bundled_configs, configs_dir, resolve_config, summary

ROOT = Path(__file__).resolve().parents[1]
SOURCE_CONFIGS = ROOT / "src" / "eomt" / "configs"
SYNTHETIC = configs_dir() / "synthetic" / "panoptic.yaml"


def test_bundled_configs_are_the_yaml_files_of_the_package() -> None:
    on_disk = {p.relative_to(SOURCE_CONFIGS).with_suffix("").as_posix() for p in SOURCE_CONFIGS.rglob("*.yaml")}
    assert set(bundled_configs()) == on_disk
    assert "coco/panoptic/eomt_large_640" in on_disk and "synthetic/panoptic" in on_disk


def test_an_existing_path_resolves_to_itself(tmp_path: Path) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text("train:\n  max_steps: 3\n")
    assert resolve_config(str(mine)) == mine
    assert load_experiment(str(mine)).train.max_steps == 3


@pytest.mark.parametrize("name", ["synthetic/panoptic", "synthetic/panoptic.yaml", "synthetic/panoptic.yml"])
def test_a_bundled_name_resolves_with_or_without_its_suffix(name: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_config(name) == SYNTHETIC


@pytest.mark.parametrize("source", [
    "configs/coco/panoptic/eomt_large_640.yaml",
    "./configs/coco/panoptic/eomt_large_640.yaml",
    "src/eomt/configs/coco/panoptic/eomt_large_640.yaml",
    "/somewhere/else/eomt/configs/coco/panoptic/eomt_large_640.yaml",
])
def test_a_checkout_path_missing_here_names_the_bundled_config(source: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # as an installed package run from another folder
    assert resolve_config(source) == configs_dir() / "coco" / "panoptic" / "eomt_large_640.yaml"


def test_a_local_file_wins_over_the_bundled_one_of_the_same_path(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    local = tmp_path / "configs" / "synthetic" / "panoptic.yaml"
    local.parent.mkdir(parents=True)
    local.write_text(SYNTHETIC.read_text().replace("max_steps: 2000", "max_steps: 7"))
    assert load_experiment("configs/synthetic/panoptic.yaml").train.max_steps == 7
    assert load_experiment("synthetic/panoptic").train.max_steps == 2000  # a name is the bundled one


@pytest.mark.parametrize("name", DINOV2_PRESET_NAMES)
def test_a_preset_resolves_to_the_bundled_config_that_reproduces_it(name: str) -> None:
    path = resolve_config(name)
    assert yaml.safe_load(path.read_text())["model"]["preset"] == name
    cfg = load_experiment(name)
    assert cfg.model == preset(name)
    assert cfg.data.dataset == name.split("_eomt_")[0]  # its dataset, e.g. coco_panoptic
    assert cfg.train.out_dir == f"runs/{name}"


@pytest.mark.parametrize("name", DINOV3_PRESET_NAMES)
def test_a_dinov3_preset_resolves_to_the_bundled_config_that_reproduces_it(name: str) -> None:
    path = resolve_config(name)
    assert path == configs_dir() / f"{name.replace('_', '/', 2)}.yaml"  # beside its DINOv2 row, `_dinov3` suffix
    assert yaml.safe_load(path.read_text())["model"]["preset"] == name
    cfg = load_experiment(name)
    assert cfg.model == preset(name) and cfg.model.backbone == "dinov3"
    assert cfg.data.dataset == name.split("_eomt_")[0] and cfg.train.out_dir == f"runs/{name}"


def test_eomt_configs_lists_the_dinov3_presets_and_the_results_they_reproduce(capsys: pytest.CaptureFixture) -> None:
    assert main(["configs"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    for name in DINOV3_PRESET_NAMES:
        assert rows[name].endswith(f"config: {name.replace('_', '/', 2)}")
    assert "reproduces PQ 47.2" in rows["coco/panoptic/eomt_small_640_dinov3"]
    assert "reproduces mIoU 59.5" in rows["ade20k/semantic/eomt_large_512_dinov3"]
    assert "1280px" in rows["coco/instance/eomt_large_1280_dinov3"]


def test_a_short_preset_name_is_the_coco_panoptic_row() -> None:
    assert resolve_config("eomt_large_640") == configs_dir() / "coco" / "panoptic" / "eomt_large_640.yaml"


@pytest.mark.parametrize("source, expected", [
    ("coco_panoptic_eomt_smal_640", "coco/panoptic/eomt_small_640"),
    ("coco/panoptic/eomt_larg_640", "coco/panoptic/eomt_large_640"),
    ("configs/custom/coco_panoptc.yaml", "custom/coco_panoptic"),
])
def test_an_unknown_name_is_one_line_with_the_closest_bundled_names(source: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=f"did you mean '{expected}'") as info:
        resolve_config(source)
    assert isinstance(info.value, FileNotFoundError)
    assert "\n" not in str(info.value) and str(info.value).startswith(f"{source}: ")


def test_the_cli_answers_an_unknown_config_in_one_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "coco_panoptic_eomt_smal_640"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did you mean 'coco/panoptic/eomt_small_640'" in err


@pytest.mark.parametrize("name", sorted(bundled_configs()))
def test_every_bundled_config_loads_and_says_what_it_is_for(name: str) -> None:
    cfg = load_experiment(name)
    assert cfg.model.task in ("panoptic", "instance", "semantic")
    assert summary(bundled_configs()[name])


def test_eomt_configs_lists_every_bundled_yaml_and_every_preset(capsys: pytest.CaptureFixture) -> None:
    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == format_listing()
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    for path in SOURCE_CONFIGS.rglob("*.yaml"):
        name = path.relative_to(SOURCE_CONFIGS).with_suffix("").as_posix()
        assert name in rows, name
    assert "reproduces PQ 56.0" in rows["coco/panoptic/eomt_large_640"]
    assert "synthetic scenes" in rows["synthetic/panoptic"]
    for name in PRESET_NAMES:
        assert rows[name].endswith(f"config: {name.replace('_', '/', 2)}")


def test_eomt_configs_name_prints_the_resolved_config(capsys: pytest.CaptureFixture) -> None:
    assert main(["configs", "coco_panoptic_eomt_small_640", "train.lr=2e-4"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["dataset"] == "coco_panoptic" and printed["train"]["lr"] == 2e-4
    assert printed["train"]["epochs"] == 24 and printed["model"]["embed_dim"] == 384


def _check_args(source: str, **kw: object) -> argparse.Namespace:
    defaults = dict(source=source, overrides=[], root=None, split=None, task=None, option=[])
    return argparse.Namespace(**{**defaults, **kw})


def test_data_check_takes_a_bundled_name_or_preset_as_a_config_and_a_format_name_as_a_format() -> None:
    cfg, _ = _spec(_check_args("synthetic/panoptic", split="val"))
    assert cfg.data.dataset == "synthetic" and cfg.data.kwargs["val_num_images"] == 100
    cfg, _ = _spec(_check_args("coco_panoptic_eomt_small_640"))
    assert cfg.data.root == "data/coco"
    cfg, spec = _spec(_check_args("coco_panoptic_json", root="mine"))
    assert cfg is None and spec == {"format": "coco_panoptic_json", "root": "mine", "split": "train"}
    assert _spec(_check_args("coco", task="panoptic"))[1]["format"] == "coco"
    with pytest.raises(ConfigError, match="did you mean 'semantic_folder'"):
        _spec(_check_args("semantic_foldr"))


def test_train_print_config_from_another_folder(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "eomt.cli", "train", "synthetic/panoptic", "--print-config", "train.max_steps=5"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    printed = yaml.safe_load(run.stdout)
    assert printed["model"]["name"] == "synthetic_panoptic_eomt_tiny_128"
    assert printed["data"]["dataset"] == "synthetic" and printed["train"]["max_steps"] == 5
