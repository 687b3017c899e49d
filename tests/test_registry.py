"""Registries: wildcards, natural order, close-match errors, duplicates, method specs."""

from __future__ import annotations

import pytest

from foundation.registry import Registry, RegistryError, natural_key
from methods import Method, create_method, expand_specs, list_methods, register_method
from methods.registry import METHODS


def test_natural_sort_orders_numbers_by_value():
    names = ["cam@10", "cam@2", "cam@1", "bcam"]
    assert sorted(names, key=natural_key) == ["bcam", "cam@1", "cam@2", "cam@10"]


def test_names_match_wildcards_in_natural_order():
    registry = Registry("thing")
    for name in ("layer10", "layer2", "other", "layer1"):
        registry.register(name)(object)
    assert registry.names() == ["layer1", "layer2", "layer10", "other"]
    assert registry.names("layer*") == ["layer1", "layer2", "layer10"]
    assert registry.names(["oth?r", "layer1"]) == ["layer1", "other"]
    assert registry.names("nothing*") == []


def test_unknown_name_suggests_close_matches():
    registry = Registry("thing")
    for name in ("layercam", "layercam_3axis", "gradcam"):
        registry.register(name)(object)
    with pytest.raises(RegistryError, match=r"unknown thing 'layrcam'; did you mean layercam"):
        registry.entry("layrcam")
    with pytest.raises(RegistryError) as error:
        registry.entry("zzz")
    assert "did you mean" not in str(error.value) and "lists all 3" in str(error.value)


def test_duplicate_and_malformed_names_are_errors():
    registry = Registry("thing")
    registry.register("a")(int)
    with pytest.raises(RegistryError, match="already registered .*builtins.int"):
        registry.register("a")(float)
    for bad in ("A", "a@1", "a*", "1a", ""):
        with pytest.raises(RegistryError, match="invalid thing name"):
            registry.register(bad)


def test_builtin_modules_load_lazily_on_first_query(monkeypatch):
    imported = []
    monkeypatch.setattr("importlib.import_module", lambda name: imported.append(name))
    registry = Registry("thing", builtin_modules=("pkg.one", "pkg.two"))
    assert imported == []
    registry.names()
    registry.names()
    assert imported == ["pkg.one", "pkg.two"]


@pytest.fixture
def toy_methods():
    """Two registered toy methods, removed again after the test."""

    @register_method("toy_layered", layers=(1, 2, 3, 4))
    class Layered(Method):
        def __call__(self, volume, model):
            return volume[0] * self.layer

    @register_method("toy_plain")
    class Plain(Method):
        def __init__(self, scale: float = 1.0):
            super().__init__()
            self.scale = scale

        def __call__(self, volume, model):
            return volume[0] * self.scale

    yield Layered, Plain
    for name in ("toy_layered", "toy_plain"):
        METHODS._entries.pop(name)


def test_create_method_parses_specs(toy_methods):
    layered = create_method("toy_layered@3")
    assert isinstance(layered, toy_methods[0]) and layered.layer == 3
    assert layered.spec == "toy_layered@3" and layered.name == "toy_layered"
    plain = create_method("toy_plain", scale=2.0)
    assert plain.scale == 2.0 and plain.spec == "toy_plain"
    with pytest.raises(RegistryError, match="needs a layer: one of toy_layered@1, .*@4"):
        create_method("toy_layered")
    with pytest.raises(RegistryError, match="has layers"):
        create_method("toy_layered@5")
    with pytest.raises(RegistryError, match="takes no layer"):
        create_method("toy_plain@1")
    with pytest.raises(RegistryError, match="did you mean toy_plain"):
        create_method("toy_plian")


def test_list_and_expand_specs(toy_methods):
    assert list_methods("toy_*") == ["toy_layered", "toy_plain"]
    assert list_methods("toy_*", specs=True) == [
        "toy_layered@1",
        "toy_layered@2",
        "toy_layered@3",
        "toy_layered@4",
        "toy_plain",
    ]
    assert expand_specs("toy_plain,toy_layered@2") == ["toy_plain", "toy_layered@2"]
    assert expand_specs(["toy_layered"]) == [f"toy_layered@{k}" for k in (1, 2, 3, 4)]
    assert expand_specs("toy_*@4") == ["toy_layered@4"]
    assert set(expand_specs("all")) >= {"toy_plain", "toy_layered@1"}
    assert expand_specs("toy_plain,toy_plain") == ["toy_plain"]
    with pytest.raises(RegistryError, match="no method matches"):
        expand_specs("nothing_*")


def test_register_method_requires_a_method_subclass():
    with pytest.raises(TypeError, match="expects a Method subclass"):
        register_method("toy_not_a_method")(int)
    assert "toy_not_a_method" not in METHODS
