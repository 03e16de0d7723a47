import os

import pytest
import torch

# Tiny models run fastest on one thread (no OpenMP contention when processes share 2 cores).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
