"""Suite-wide settings."""

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_intra_op_thread():
    """The tests' tensors are tiny: a second intra-op thread gains nothing on an idle machine and,
    on a busy 2-core one, only waits for a core (measured up to 40x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
