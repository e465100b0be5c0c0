"""registry.py: named factories (backbones, heads, datasets, methods) and what an unknown or repeated name says."""
import pytest

from segbench.registry import Registry


def test_registry_register_get_and_list():
    reg = Registry("widget")

    @reg.register("b")
    def make_b():
        return "b"

    reg.add("a1", lambda: "a1")
    assert reg.get("b")() == "b"
    assert reg.names() == ["a1", "b"]
    assert reg.names("a*") == ["a1"]
    assert "b" in reg and len(reg) == 2


def test_registry_unknown_name_lists_valid_ones():
    reg = Registry("widget")
    reg.add("alpha", object)
    with pytest.raises(KeyError, match=r"unknown widget 'beta'; valid names: alpha"):
        reg.get("beta")


def test_registry_refuses_silent_replacement():
    reg = Registry("widget")
    reg.add("x", int)
    with pytest.raises(KeyError, match="already registered"):
        reg.add("x", float)
    reg.add("x", float, override=True)
    assert reg.get("x") is float
