"""Model tests run torch on one intra-op thread: on the shared 2-core box, OpenMP threads that spin while other
processes hold the cores make tiny ops ~50x slower (measured: a small forward pass 570 ms with 2 threads at load 7,
7 ms with 1). The setting is restored after each test so other packages' tests are unaffected."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
