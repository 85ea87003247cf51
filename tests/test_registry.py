"""Plugin discovery: entry points, failures, duplicates, DYNVLM_LOAD_PLUGINS, provenance."""

from __future__ import annotations

import sys
import types

import pytest
from plugin_factory import compressor_module, make_distribution

import dynvlm
from dynvlm.registry import PluginError, Registry, get_registry


@pytest.fixture
def clean_modules():
    """Forget plugin modules the test imports so each test starts from a fresh import."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith(("good_plugin", "broken_plugin", "dup_plugin", "bad_hook")):
            del sys.modules[name]


def test_first_party_plugins_come_from_entry_points():
    reg = Registry()
    reg.load_entry_points()
    comp = reg.get("compressor", "pool")
    assert comp.distribution == "dynvlm"
    assert comp.provenance == f"dynvlm=={dynvlm.__version__}"
    assert comp.plugin == "dynvlm:pool"
    assert not [f for f in reg.failures if f.distribution == "dynvlm"], reg.failures


def test_unknown_name_lists_installed():
    with pytest.raises(PluginError) as err:
        get_registry().get("compressor", "no-such-thing")
    msg = str(err.value)
    assert "no-such-thing" in msg and "pool" in msg and "installed compressors" in msg


def test_unknown_kind_is_rejected():
    with pytest.raises(PluginError, match="kinds: compressor, encoder, llm"):
        get_registry().names("projectors")


def test_broken_plugin_is_reported_and_others_load(tmp_path, monkeypatch, clean_modules):
    make_distribution(
        tmp_path,
        "broken-dist",
        "1.2.3",
        {"broken_plugin": "import not_a_module_anywhere\n", "good_plugin": compressor_module("goodcomp")},
        {"dynvlm": {"broken": "broken_plugin", "good": "good_plugin"}},
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry()
    with pytest.warns(RuntimeWarning, match="broken-dist==1.2.3"):
        reg.load_entry_points()
    [failure] = [f for f in reg.failures if f.distribution == "broken-dist"]
    assert failure.entry_point == "broken"
    assert "not_a_module_anywhere" in failure.error
    assert "Traceback" in failure.traceback and "broken_plugin" in failure.traceback
    assert reg.get("compressor", "goodcomp").distribution == "broken-dist"
    assert reg.get("compressor", "pool").distribution == "dynvlm"
    with pytest.raises(PluginError, match=r"failed to load: broken \(broken-dist\)"):
        reg.get("compressor", "missing")


def test_duplicate_names_raise_naming_both_distributions():
    reg = Registry()
    first = types.ModuleType("dup_plugin_a")
    second = types.ModuleType("dup_plugin_b")

    class A(dynvlm.Compressor):
        pass

    class B(dynvlm.Compressor):
        pass

    first.register_compressors = dynvlm.hookimpl(lambda register: register("same", A))
    second.register_compressors = dynvlm.hookimpl(lambda register: register("same", B))
    reg.add_plugin(first, distribution="alpha-dist", version="1.0")
    with pytest.raises(PluginError) as err:
        reg.add_plugin(second, distribution="beta-dist", version="2.0")
    msg = str(err.value)
    assert "'same'" in msg and "alpha-dist==1.0" in msg and "beta-dist==2.0" in msg


def test_duplicate_across_installed_distributions(tmp_path, monkeypatch, clean_modules):
    make_distribution(tmp_path, "dup-dist", "0.3", {"dup_plugin": compressor_module("pool")}, {"dynvlm": {"dup": "dup_plugin"}})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match=r"compressor 'pool' is registered twice") as err:
        Registry().load_entry_points()
    assert f"dynvlm=={dynvlm.__version__}" in str(err.value) and "dup-dist==0.3" in str(err.value)


def test_hookimpl_with_wrong_signature_is_a_failure_not_a_crash(clean_modules):
    reg = Registry()
    bad = types.ModuleType("bad_hook")
    bad.register_compressors = dynvlm.hookimpl(lambda reg_fn, extra: None)
    with pytest.warns(RuntimeWarning, match="bad_hook"):
        reg.add_plugin(bad, name="bad_hook", distribution="bad-dist")
    assert reg.failures and reg.failures[0].distribution == "bad-dist"
    assert reg.names("compressor") == []


def test_load_plugins_env_restricts_distributions(tmp_path, monkeypatch, clean_modules):
    make_distribution(tmp_path, "extra-dist", "0.1", {"good_plugin": compressor_module("extra")}, {"dynvlm": {"g": "good_plugin"}})
    monkeypatch.syspath_prepend(str(tmp_path))

    monkeypatch.setenv("DYNVLM_LOAD_PLUGINS", "dynvlm")
    reg = get_registry()
    assert "pool" in reg.names("compressor") and "extra" not in reg.names("compressor")

    monkeypatch.setenv("DYNVLM_LOAD_PLUGINS", "extra_dist")  # names are normalised
    reg = get_registry()
    assert reg.names("compressor") == ["extra"]

    monkeypatch.setenv("DYNVLM_LOAD_PLUGINS", "")
    assert get_registry().table() == []

    monkeypatch.delenv("DYNVLM_LOAD_PLUGINS")
    assert {"pool", "extra"} <= set(get_registry(refresh=True).names("compressor"))
    get_registry(refresh=True)


def test_built_component_records_provenance():
    comp = dynvlm.build_component("compressor", {"name": "pool"}, dim=8)
    assert comp.provenance == {"kind": "compressor", "name": "pool", "distribution": "dynvlm", "version": dynvlm.__version__}
    from dynvlm.config import provenance_record

    assert provenance_record(comp) == {"compressor/pool": f"dynvlm=={dynvlm.__version__}"}
