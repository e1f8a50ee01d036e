import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The optimizers' small products are dominated by thread contention on the shared 2-core
    machine; one thread makes these tests ~50x faster. Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
