import math
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ._dist_worker import evaluate_share, worker


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_close(got: object, expected: object, path: str = "") -> None:
    if isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), path
        for key in expected:
            _assert_close(got[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, float) and math.isnan(expected):
        assert isinstance(got, float) and math.isnan(got), path
    else:
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-12), path  # float sums may regroup


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built in")
def test_two_processes_give_the_one_process_numbers(tmp_path: Path) -> None:
    mp.spawn(worker, args=(2, f"tcp://127.0.0.1:{_free_port()}", str(tmp_path)), nprocs=2, join=True)
    single = evaluate_share(0, 1)
    assert single["panoptic"]["per_class"]["0"]["tp"] > 0 and single["instance"]["ap"] > 0
    for rank in range(2):
        _assert_close(torch.load(tmp_path / f"rank{rank}.pt", weights_only=False), single)
