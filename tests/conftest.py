"""Shared fixtures."""
import pytest
import torch


@pytest.fixture(autouse=True)
def scoped_datasets():
    """Datasets a test registers (YAML files in its data root, plug-ins, decorators) end with the test, so the next
    test's dataset of the same name is its own."""
    from segbench.data import DATASETS

    with DATASETS.scoped():
        yield


@pytest.fixture(scope="module")
def one_thread():
    """Tiny inputs gain nothing from intra-op threads, and several threads on a shared 2-core box thrash."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
