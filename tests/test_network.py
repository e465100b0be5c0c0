"""network.py: a cell's network is built in one place, so training, the dry run's placement check and a trained
cell rebuilt from its record build the same one."""
import pytest
import torch

from segbench import network
from segbench.config import ModelSettings, apply_overrides, load_config
from segbench.validation import validate_study


@pytest.fixture
def built(monkeypatch):
    """Every network built, as the keyword arguments create_model got."""
    calls = []
    real = network.create_model

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)
    monkeypatch.setattr(network, "create_model", recording)
    return calls


def test_the_dry_runs_placement_check_builds_the_network_training_builds(built):
    """It once left out the aux head, so a method that cannot sit beside one would have passed the check."""
    cfg = apply_overrides(load_config("embedded"), ["model.aux=true", "methods=[erm, iw]", "backbones=[resnet18]"])
    validate_study(cfg, None)
    assert built and all(call["aux"] is True and call["pretrained"] is None for call in built)


def test_a_cell_network_carries_its_method():
    model, method = network.build_cell_model("resnet18", "fcn", ModelSettings(pretrained=None, aux=True), "iw")
    assert method.name == "iw" and "aux" in model.train()(torch.zeros(1, 3, 32, 32))
    assert any("Whitening" in type(m).__name__ for m in model.modules())
