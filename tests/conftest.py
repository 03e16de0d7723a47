import os

import pytest
import torch

# CI and development machines have 2 cores; keep every test deterministic and light.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
