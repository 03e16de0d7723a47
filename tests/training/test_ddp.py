"""Multi-process training: two processes with half the batch end with the weights of one process
with the whole batch.

What makes it hold: `ResumableSampler` deals each global batch over the processes; the mask and
cross-entropy losses divide by normalizers averaged over processes, so DDP's mean of the
gradients is the one-process gradient; and the loss's random points come from one generator per
image, seeded by its place in the global batch (`image_generators`), not from the global RNG, as
do the masked-attention lifting draws. The run anneals masked attention over the whole run
(probabilities strictly between 0 and 1 at steps 1 and 2), so queries are lifted at random.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from eomt.config import load_experiment
from eomt.structures import Target
from eomt.training import run as engine
from eomt.training.data_module import ResumableSampler, global_batch_positions
from eomt.training.losses import MaskClassificationLoss
from eomt.training.matcher import hungarian_match
from eomt.training.points import image_generators

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "model.embed_dim=32", "model.depth=3", "model.num_heads=2", "model.num_blocks=2",
    "model.img_size=[64,64]", "model.num_queries=6",
    "data.num_workers=0", "data.scale_range=[0.8,1.2]",
    "data.options={size: 64, train_num_images: 8, val_num_images: 4}",
    "train.num_points=256", "train.warmup_steps=[1,1]", "train.checkpoint_every_n_steps=0",
    "train.log_every_n_steps=1", "train.val_every_n_epochs=100", "train.threads=1",
    "train.precision=32-true", "train.anneal_windows=[[0,1],[0,1]]", "train.accelerator=cpu",
    "train.max_steps=3",  # 2 steps per epoch: the run crosses an epoch boundary
]


def test_sampler_shards_are_the_global_batch_at_their_positions() -> None:
    one = list(ResumableSampler(10, 4, seed=3))
    shards = [list(ResumableSampler(10, 2, seed=3, rank=r, world=2)) for r in range(2)]
    assert len(one) == 8 and all(len(s) == 4 for s in shards)
    for step in range(2):
        whole = one[4 * step : 4 * step + 4]
        for rank, shard in enumerate(shards):
            mine = shard[2 * step : 2 * step + 2]
            assert [whole[p] for p in global_batch_positions(2, rank, 2)] == mine


def _batch(counts: tuple[int, ...], queries: int = 5) -> tuple[torch.Tensor, torch.Tensor, list[Target]]:
    g = torch.Generator().manual_seed(1)
    masks = torch.randn(len(counts), queries, 8, 8, generator=g)
    classes = torch.randn(len(counts), queries, 4, generator=g)
    targets = [
        Target(
            torch.rand(n, 32, 32, generator=g) > 0.5,
            torch.randint(0, 3, (n,), generator=g),
            torch.zeros(n, dtype=torch.bool),
        )
        for n in counts
    ]
    return masks, classes, targets


def test_points_and_gradients_do_not_depend_on_the_batch_split() -> None:
    counts, queries = (3, 1, 0, 7), 5  # image 3 has more targets than queries
    masks, classes, targets = _batch(counts, queries)
    criterion = MaskClassificationLoss(3, num_points=64)

    def gens(positions: list[int]) -> list[torch.Generator]:
        return image_generators(7, 11, positions, torch.device("cpu"))

    whole_in = [masks.clone().requires_grad_(), classes.clone().requires_grad_()]
    whole = criterion(*whole_in, targets, generator=gens([0, 1, 2, 3]))
    criterion.weighted_total(whole).backward()
    full_match = hungarian_match(classes, masks, targets, num_points=64, generator=gens([0, 1, 2, 3]))

    # Two processes by hand: each divides by the normalizers averaged over both, DDP averages.
    shards = [global_batch_positions(2, rank, 2) for rank in range(2)]
    local = [criterion.normalizers(sum(min(queries, counts[p]) for p in s), 2 * queries, masks.device) for s in shards]
    num_masks = (local[0][0] + local[1][0]) / 2
    class_normalizer = (local[0][1] + local[1][1]) / 2
    split_in = [masks.clone().requires_grad_(), classes.clone().requires_grad_()]
    for s in shards:
        part = criterion(
            split_in[0][s], split_in[1][s], [targets[p] for p in s],
            num_masks=num_masks, class_normalizer=class_normalizer, generator=gens(s),
        )
        (criterion.weighted_total(part) / 2).backward()
        part_match = hungarian_match(classes[s], masks[s], [targets[p] for p in s], num_points=64, generator=gens(s))
        for p, (src, tgt) in zip(s, part_match):
            assert torch.equal(src, full_match[p][0]) and torch.equal(tgt, full_match[p][1])
    for full, split in zip(whole_in, split_in):
        torch.testing.assert_close(split.grad, full.grad, rtol=0, atol=1e-7)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_two_processes(out: Path) -> subprocess.Popen:
    """`eomt train` on 2 CPU processes as a user runs it (Lightning starts the second one)."""
    env = {
        **os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
    }
    cmd = [
        sys.executable, "-m", "eomt.cli", "train", str(ROOT / "configs/synthetic/panoptic.yaml"),
        "--no-progress", "--resume", "never", *TINY, "data.batch_size=2",
        "train.devices=2", "train.strategy=ddp", f"train.out_dir={out}",
    ]
    out.mkdir()
    with open(out / "stderr.txt", "w") as stderr:  # a file: a pipe nobody reads could fill up
        # Its own process group: Lightning's second process is a child of the first.
        return subprocess.Popen(
            cmd, env=env, cwd=out, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True
        )


@pytest.mark.slow
def test_two_processes_train_the_weights_of_one_process_with_the_whole_batch(tmp_path: Path) -> None:
    # Start-up (interpreter, torch, Lightning) is most of a run's time: the one-process reference
    # trains in this process meanwhile, with the same config but the whole batch.
    two_dir, one_dir = tmp_path / "two", tmp_path / "one"
    proc = _start_two_processes(two_dir)
    try:
        cfg = load_experiment(
            str(ROOT / "configs/synthetic/panoptic.yaml"), [*TINY, "data.batch_size=4", f"train.out_dir={one_dir}"]
        )
        engine.train(cfg, resume="never", progress=False)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:  # a failure here: stop both of its processes
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, (two_dir / "stderr.txt").read_text()[-3000:]
    one, two = load_file(one_dir / "model.safetensors"), load_file(two_dir / "model.safetensors")
    assert one.keys() == two.keys()
    # Measured: at most 3e-8 after 3 steps (float32 summation order); 6e-3 before the loss's
    # points and cross-entropy were made independent of the split.
    worst = max((one[k].float() - two[k].float()).abs().max().item() for k in one)
    assert worst < 1e-5, worst
