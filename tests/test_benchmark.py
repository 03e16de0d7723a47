"""Timing, FLOP counting and memory helpers, and smoke runs of the benchmark scripts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from eomt import EoMT
from eomt.benchmark import (
    PeakMemory,
    count_flops,
    environment_info,
    meta_model,
    time_fn,
    time_round_robin,
)
from eomt.config import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def test_time_fn_calls_warmup_plus_iters_and_orders_stats() -> None:
    calls = []
    stats = time_fn(lambda: calls.append(1), warmup=3, iters=7)
    assert len(calls) == 10
    assert stats.iters == 7 and len(stats.samples_ms) == 7
    assert stats.min_ms <= stats.median_ms <= stats.p90_ms <= max(stats.samples_ms)
    assert stats.min_ms <= stats.mean_ms <= max(stats.samples_ms)
    assert stats.p90_ms == sorted(stats.samples_ms)[6]  # nearest rank: ceil(0.9 * 7) = 7th
    with pytest.raises(ValueError, match="iters: expected >= 1, got 0"):
        time_fn(lambda: None, iters=0)


def test_time_round_robin_interleaves() -> None:
    order: list[str] = []
    stats = time_round_robin({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, warmup=1, iters=2)
    assert order == ["a", "b"] * 3
    assert set(stats) == {"a", "b"} and stats["a"].iters == 2


def test_count_flops_matches_a_linear_layer_by_hand() -> None:
    counted = count_flops(nn.Linear(8, 16), (4, 8))
    assert counted.flops == 2 * 4 * 8 * 16
    assert counted.macs == 4 * 8 * 16 and counted.gmacs == pytest.approx(4 * 8 * 16 / 1e9)


def test_count_flops_scales_with_batch_and_meta_matches_cpu() -> None:
    cfg = tiny_config()
    model = EoMT(cfg).eval()
    model.set_attn_mask_probs([0.0, 0.0])
    one = count_flops(model, (1, 3, 64, 64))
    two = count_flops(model, (2, 3, 64, 64))
    assert one.flops > 0
    assert two.flops == pytest.approx(2 * one.flops, rel=0.01)
    assert count_flops(meta_model(cfg, 0.0), (1, 3, 64, 64)).flops == one.flops
    # masked attention adds an intermediate prediction per query block
    assert count_flops(meta_model(cfg, 1.0), (1, 3, 64, 64)).flops > one.flops


def test_meta_model_allocates_no_weights() -> None:
    model = meta_model(tiny_config(), 0.0)
    assert all(p.device.type == "meta" for p in model.parameters())
    assert not model.masked_attention_active


def test_peak_memory_sees_a_large_cpu_allocation() -> None:
    with PeakMemory("cpu") as pm:
        x = torch.ones(16 * 2**20)  # 64 MiB, touched
        del x
    if pm.method.startswith("rss peak"):
        assert 48 <= pm.peak_mb < 1024
    assert pm.to_dict()["method"] == pm.method


def test_environment_info_names_what_timings_depend_on() -> None:
    info = environment_info("cpu", "bf16")
    assert info["torch"] == torch.__version__
    assert info["threads"] == torch.get_num_threads()
    assert info["dtype"] == "bf16" and info["device"] == "cpu" and info["device_name"]


def _run(script: str, *args: str, tmp_path: Path) -> dict:
    out = tmp_path / f"{script}.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), *args, "--json", str(out)],
        capture_output=True, text=True, timeout=900, cwd=ROOT,  # a guard against hangs, not a timing assert
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_inference_script_smoke(tmp_path: Path) -> None:
    rec = _run("inference", "--preset", "tiny", "--iters", "1", "--warmup", "0",
               "--precisions", "fp32,bf16-autocast", tmp_path=tmp_path)
    names = {r["name"] for r in rec["rows"]}
    assert {"ours fp32 eager", "ours bf16-autocast eager", "hf fp32 eager", "ours postprocess",
            "hf postprocess", "ours fp32 end-to-end", "hf fp32 end-to-end"} <= names
    assert rec["environment"]["torch"] == torch.__version__
    assert "ours_fp32 / hf_fp32 (network)" in rec["ratios"]
    # the transformers twin carries the same weights: same outputs
    assert rec["parity_fp32_max_abs_diff"]["mask_logits"] < 1e-3
    assert rec["parity_fp32_max_abs_diff"]["class_logits"] < 1e-4
    # the crafted post-processing workload keeps segments, and both implementations agree
    assert rec["postprocess"]["segments_ours"] > 0
    assert rec["postprocess"]["segments_ours"] == rec["postprocess"]["segments_hf"]
    assert rec["postprocess"]["pixel_agreement"] == 1.0


def test_training_step_script_smoke(tmp_path: Path) -> None:
    rec = _run("training_step", "--preset", "tiny", "--iters", "1", "--warmup", "0", "--targets", "3", "--probs", "1",
               tmp_path=tmp_path)
    assert {r["name"] for r in rec["rows"]} == {
        "ours bf16-autocast probs=1", "hf fp32 probs=1", "hf bf16-autocast probs=1"
    }
    assert set(rec["ratios"]) == {
        "ours bf16-autocast / hf fp32 (probs=1)", "ours bf16-autocast / hf bf16-autocast (probs=1)"
    }
    assert all(r["median_ms"] > 0 for r in rec["rows"])
    # own total = step peak + weights, gradients and the two AdamW moments held between steps
    weights = sum(p.numel() * 4 for p in EoMT(tiny_config()).parameters())
    assert all(r["total_peak_mb"] * 2**20 >= 4 * weights - 2**20 for r in rec["rows"])


def test_flops_script_smoke(tmp_path: Path) -> None:
    rec = _run("flops", "--presets", "tiny,coco_panoptic_eomt_small_640,coco_panoptic_eomt_small_640_dinov3",
               tmp_path=tmp_path)
    small = next(r for r in rec["rows"] if r["preset"] == "coco_panoptic_eomt_small_640")
    assert small["paper_gflops"] == 68
    assert small["ratio"] == pytest.approx(1.0, abs=0.02)  # counted MACs reproduce the paper
    assert small["gmacs_masked"] > small["gmacs"] > 0
    # transformers' EoMT and EoMT-DINOv3 of the same configs do the same work (RoPE adds no matmul).
    for row in rec["rows"]:
        assert row["hf_gmacs"] == pytest.approx(row["gmacs"], rel=1e-3), row["preset"]


def test_cli_bench_reports_latency_flops_and_memory(tmp_path: Path, capsys) -> None:
    from eomt.checkpoints import save_model
    from eomt.cli import main

    model = EoMT(tiny_config())
    model.set_attn_mask_probs([0.0, 0.0])
    ckpt = save_model(model, tmp_path / "tiny.safetensors")
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", str(ckpt), "--iters", "2", "--warmup", "0", "--batch", "1,2",
                 "--precision", "fp32,bf16,fp16", "--mode", "eager,cudagraphs", "--end-to-end",
                 "--json", str(out)]) == 0
    rec = json.loads(out.read_text())
    rows = rec["rows"]
    assert len(rows) == 2 * 3 * 2  # batch x precision x mode, skipped ones included
    timed = [r for r in rows if "skipped" not in r]
    assert {(r["input"][0], r["precision"], r["mode"]) for r in timed} == {
        (b, p, "eager") for b in (1, 2) for p in ("fp32", "bf16")
    }
    assert {r["skipped"] for r in rows if "skipped" in r} == {"fp16 needs CUDA", "CUDA graphs need CUDA"}
    expected = count_flops(meta_model(tiny_config(), 0.0), (1, 3, 64, 64)).gmacs
    assert all(r["gmacs_per_image"] == pytest.approx(expected) for r in rows)
    assert all(r["network"]["iters"] == 2 and r["images_per_s"] > 0 for r in timed)
    assert [r["input"][0] for r in timed if "end_to_end_480x640" in r] == [1, 1]  # eager, batch 1
    assert rec["environment"]["device"] == "cpu"
    text = capsys.readouterr().out
    assert "img/s" in text and "skipped: fp16 needs CUDA" in text


def test_cli_bench_rejects_unknown_names(capsys) -> None:
    from eomt.cli import main

    assert main(["bench", "--preset", "eomt_small_640", "--precision", "fp8"]) != 0
    assert "--precision: unknown ['fp8']" in capsys.readouterr().err
    assert main(["bench", "--preset", "eomt_tiny_3"]) != 0
    assert "eomt_tiny_3" in capsys.readouterr().err


def test_inference_forward_runs_each_precision_and_names_what_cannot_run() -> None:
    from eomt.benchmark import PRECISIONS, capture_cuda_graph, inference_forward, skip_reason
    from eomt.config import precision as precision_table
    from eomt.errors import OptionError

    assert tuple(PRECISIONS) == precision_table.BENCHMARK_NAMES  # the one precision table
    assert PRECISIONS["bf16-autocast"] == ("float32", "bfloat16") and PRECISIONS["bf16"] == ("bfloat16", None)
    model = EoMT(tiny_config()).eval()
    model.set_attn_mask_probs([0.0, 0.0])
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        expected = model(x).mask_logits
    assert torch.equal(inference_forward(model, x, "fp32", "eager")().mask_logits, expected)
    assert next(model.parameters()).dtype == torch.float32  # bf16 runs on a converted copy
    inference_forward(model, x, "bf16", "eager")()
    assert next(model.parameters()).dtype == torch.float32
    cpu = torch.device("cpu")
    assert skip_reason("fp16", "eager", cpu) == "fp16 needs CUDA"
    assert skip_reason("fp32", "cudagraphs", cpu) == "CUDA graphs need CUDA"
    assert skip_reason("bf16", "compile", cpu) is None
    with pytest.raises(OptionError, match="precision: found 'fp8'"):
        inference_forward(model, x, "fp8", "eager")
    with pytest.raises(OptionError, match="mode: found 'jit'"):
        inference_forward(model, x, "fp32", "jit")
    if torch.cuda.is_available():
        y = torch.zeros(4, device="cuda")
        replay = capture_cuda_graph(lambda: y * 2 + 1)
        y.fill_(3.0)
        assert replay().tolist() == [7.0] * 4


# The commands of the project's GPU check (shared/device/gpu_check.sh), verbatim but for the output paths.
GPU_CHECK_BENCH = ["bench", "--preset", "coco_panoptic_eomt_large_640,coco_panoptic_eomt_small_640", "--device",
                   "cuda", "--precision", "bf16", "--mode", "eager,compile,max-autotune,cudagraphs", "--batch", "1,32",
                   "--end-to-end", "--iters", "30"]
GPU_CHECK_SCRIPT = ["--device", "cuda", "--preset", "coco_panoptic_eomt_large_640", "--batch", "4"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_check_commands_fail_in_one_line_without_cuda(tmp_path: Path, capsys) -> None:
    from eomt.cli import main

    # Every option is parsed and checked before the device: the only complaint is the missing GPU.
    assert main([*GPU_CHECK_BENCH, "--json", str(tmp_path / "bench.json")]) == 1
    assert capsys.readouterr().err == (
        "eomt bench: error: device: 'cuda' requested but CUDA is not available on this machine\n")
    procs = {script: subprocess.Popen(  # both at once: the time is python's and torch's start-up
        [sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), *GPU_CHECK_SCRIPT, "--json",
         str(tmp_path / f"{script}.json")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        for script in ("inference", "training_step")}
    for script, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 1
        assert err == f"benchmarks/{script}.py: error: --device: 'cuda' requested but CUDA is not available on this machine\n"
        assert not (tmp_path / f"{script}.json").exists()
    assert not (tmp_path / "bench.json").exists()


def test_inference_script_gpu_check_command_on_cpu_with_dinov3_twin(tmp_path: Path) -> None:
    # gpu_check's inference command with --device cpu at the tiny DINOv3 config: the transformers
    # twin is EomtDinov3ForUniversalSegmentation holding the same weights.
    rec = _run("inference", "--device", "cpu", "--preset", "tiny_dinov3", "--batch", "4", "--iters", "1",
               "--warmup", "0", "--precisions", "fp32,bf16", "--no-postprocess", tmp_path=tmp_path)
    assert rec["hf_class"] == "EomtDinov3ForUniversalSegmentation"
    assert rec["parity_fp32_max_abs_diff"]["mask_logits"] < 1e-4
    assert rec["parity_fp32_max_abs_diff"]["class_logits"] < 1e-4
    assert {r["name"] for r in rec["rows"]} == {"ours fp32 eager", "ours bf16 eager", "hf fp32 eager"}
    assert all(r["images_per_s"] == pytest.approx(4e3 / r["median_ms"], rel=1e-3) for r in rec["rows"])
    assert {"ours_fp32 / hf_fp32 (network)", "ours_bf16 / hf_fp32 (network)"} <= set(rec["ratios"])
    assert rec["precision_vs_fp32"]["bf16"]["mask_sign_agreement"] > 0.9
    assert rec["gpu_targets"] == [] and rec["environment"]["device"] == "cpu"


def test_gpu_target_verdicts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_targets

    large, small = gpu_targets.LARGE, gpu_targets.SMALL
    row = lambda model, batch, mode, rate, e2e_ms=None: {  # noqa: E731 -- an `eomt bench --json` row
        "model": model, "input": [batch, 3, 640, 640], "precision": "bf16", "mode": mode, "network": {},
        "images_per_s": rate, **({"end_to_end_480x640": {"median_ms": e2e_ms}} if e2e_ms else {})}
    record = {"rows": [row(large, 1, "eager", 400.0, 5.0), row(large, 1, "cudagraphs", 900.0, 3.0),
                       row(large, 32, "compile", 450.0), row(small, 32, "eager", 2000.0),
                       {**row(small, 1, "cudagraphs", 0.0), "skipped": "CUDA graphs need CUDA"}]}
    verdicts = {v["target"]: v for v in gpu_targets.bench_verdicts(record)}
    assert set(verdicts) == {f"{large} batch 1 end to end >= 256 img/s", f"{large} batch 32 network >= 500 img/s"}
    e2e = verdicts[f"{large} batch 1 end to end >= 256 img/s"]
    assert e2e["measured"] == pytest.approx(333.3) and e2e["met"] and "cudagraphs" in e2e["row"]
    assert not verdicts[f"{large} batch 32 network >= 500 img/s"]["met"]

    rows = [{"name": "ours bf16-autocast probs=1", "images_per_s": 10.0, "total_peak_mb": 18000.0},
            {"name": "hf fp32 probs=1", "images_per_s": 5.0}, {"name": "hf bf16-autocast probs=1", "images_per_s": 8.0}]
    cuda = torch.device("cuda")
    got = gpu_targets.training_verdicts(large, 4, cuda, "ours bf16-autocast", rows)
    assert [(v["measured"], v["met"]) for v in got] == [(18.87, True), (1.25, False)]  # 18000 MiB = 18.87 GB
    assert "hf bf16-autocast" in got[1]["row"]  # against transformers' faster precision
    assert gpu_targets.training_verdicts(large, 4, torch.device("cpu"), "ours bf16-autocast", rows) == []
    assert gpu_targets.training_verdicts(large, 2, cuda, "ours bf16-autocast", rows) == []


def test_gpu_target_rows_run_end_to_end_at_the_tiny_config(monkeypatch: pytest.MonkeyPatch) -> None:
    # The target rows that `inference.py --device cuda` adds, built for a tiny stand-in target and
    # run eagerly on the CPU (CUDA-graph replay needs CUDA): the network, then our panoptic rule.
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import common
    import gpu_targets

    target = gpu_targets.InferenceTarget("tiny", 2, True, 1e-9)
    monkeypatch.setattr(gpu_targets, "INFERENCE_TARGETS", (target,))
    monkeypatch.setattr(gpu_targets, "TARGET_MODES", ("eager",))
    model = common.build_model(common.build_config("tiny"))
    fns, meta = gpu_targets.inference_fns(model, "tiny", torch.device("cpu"))
    assert list(fns) == ["target ours bf16 eager batch 2 end-to-end"]
    results = next(iter(fns.values()))()
    assert len(results) == 2 and results[0].segmentation.shape == (480, 640) and results[0].segments
    rows = [{"name": name, **m, "images_per_s": 3.0} for name, m in meta.items()]
    assert gpu_targets.inference_verdicts(rows) == [
        {"target": target.name, "measured": 3.0, "row": "target ours bf16 eager batch 2 end-to-end", "met": True}]


def test_video_script_smoke(tmp_path: Path) -> None:
    rec = _run("video", "--preset", "tiny", "--iters", "1", "--warmup", "0", "--frames", "2", tmp_path=tmp_path)
    assert [r["path"] for r in rec["rows"]][1] == "VidEoMT.step (streaming)"
    assert all(r["ms_per_frame"] > 0 for r in rec["rows"])
