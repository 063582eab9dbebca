"""The registry: timm-shaped queries, registry.yaml as the source of variants, duplicates, neck_cfg."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import fpn_zoo
from fpn_zoo import _registry

ROOT_YAML = Path(__file__).resolve().parents[1] / "registry.yaml"


def test_registry_yaml_and_list_necks_agree_exactly():
    doc = yaml.safe_load(ROOT_YAML.read_text())
    assert sorted(doc["necks"]) == sorted(fpn_zoo.list_necks())


def test_the_loaded_registry_is_the_repository_one():
    """An installed copy must carry the same registry.yaml as the repository root."""
    assert _registry.registry_path().read_bytes() == ROOT_YAML.read_bytes()


def test_every_variant_has_summary_paper_and_tags():
    for name in fpn_zoo.list_necks():
        cfg = fpn_zoo.neck_cfg(name)
        assert cfg.summary and cfg.paper.startswith("https://") and cfg.tags, name


def test_wildcards_and_excludes():
    assert fpn_zoo.list_necks("*pan*") == [n for n in fpn_zoo.list_necks() if "pan" in n]
    assert "pan" not in fpn_zoo.list_necks("*pan*", exclude_filters="pan")
    assert set(fpn_zoo.list_necks(["fpn", "pan"])) == {"fpn", "pan"}
    assert fpn_zoo.list_necks(family="pan") == [n for n in fpn_zoo.list_necks() if fpn_zoo.neck_cfg(n).family == "pan"]


def test_natural_sort():
    assert _registry._natural_key("bifpn_d10") > _registry._natural_key("bifpn_d2")
    names = fpn_zoo.list_necks()
    assert names == sorted(names, key=_registry._natural_key)


def test_is_neck():
    assert fpn_zoo.is_neck("fpn") and fpn_zoo.is_neck("pan")
    assert not fpn_zoo.is_neck("fpnn")


def test_neck_cfg_merges_family_defaults_with_variant_args():
    cfg = fpn_zoo.neck_cfg("fpn_bn_lrelu_64")
    assert cfg.family == "fpn"
    assert cfg.args["out_channels"] == 64 and cfg.args["act_kwargs"] == {"negative_slope": 0.1}
    assert cfg.args["upsample_mode"] == "nearest"  # a family default, not set by the variant
    assert fpn_zoo.neck_cfg("fpn").args["out_channels"] == 256


def test_neck_cfg_of_a_built_neck_rebuilds_it():
    neck = fpn_zoo.create_neck("pan", [8, 16], out_channels=24, smooth_depth=2)
    cfg = fpn_zoo.neck_cfg(neck)
    assert cfg.name == "pan" and cfg.args["out_channels"] == 24 and cfg.args["smooth_depth"] == 2
    again = fpn_zoo.create_neck(cfg.name, [8, 16], **cfg.args)
    assert again.state_dict().keys() == neck.state_dict().keys()
    assert all(a.shape == b.shape for a, b in zip(again.state_dict().values(), neck.state_dict().values()))


def test_original_notes_variant_is_bn_leaky_relu_64_everywhere():
    import torch.nn as nn

    neck = fpn_zoo.create_neck("fpn_bn_lrelu_64", [8, 16, 32])
    convs = [m for m in neck.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in neck.modules() if isinstance(m, nn.BatchNorm2d)]
    acts = [m for m in neck.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(convs) == len(norms) == len(acts) == 6
    assert all(a.negative_slope == 0.1 for a in acts)
    assert all(c.out_channels == 64 and c.bias is None for c in convs)


def test_deeper_smoothing_stacks_more_blocks():
    import torch.nn as nn

    def convs(name):
        return sum(isinstance(m, nn.Conv2d) for m in fpn_zoo.create_neck(name, [8, 16, 32]).modules())

    assert convs("fpn_deep2") == 3 + 3 * 2
    assert convs("fpn_deep3") == 3 + 3 * 3


def test_unknown_neck_in_neck_cfg():
    with pytest.raises(ValueError, match="did you mean 'pan'"):
        fpn_zoo.neck_cfg("pna")


def test_duplicate_family_names_both_sources():
    def fpn(spec):  # same name as the built-in family, different source
        return None

    with pytest.raises(ValueError, match=r"'fpn' is registered twice: by fpn_zoo\.necks\.fpn\.fpn and by .*test_registry"):
        fpn_zoo.register_neck("fpn")(fpn)


def test_duplicate_variant_names_both_sources_and_override():
    with pytest.raises(ValueError, match=r"'fpn' is defined twice: by fpn_zoo registry.yaml and by my tests"):
        fpn_zoo.register_variant("fpn", "fpn", {"out_channels": 8}, source="my tests")
    try:
        fpn_zoo.register_variant("fpn_tmp_test", "fpn", {"out_channels": 8}, source="my tests")
        fpn_zoo.register_variant("fpn_tmp_test", "fpn", {"out_channels": 16}, source="my tests", override=True)
        assert fpn_zoo.neck_cfg("fpn_tmp_test").args["out_channels"] == 16
    finally:
        _registry._state.variants.pop("fpn_tmp_test", None)


def test_variant_with_an_argument_its_family_lacks():
    with pytest.raises(ValueError, match=r"neck 'fpn_bad_test' \(my tests\) of family 'fpn' takes no argument 'out_chans'; did you mean 'out_channels'"):
        fpn_zoo.register_variant("fpn_bad_test", "fpn", {"out_chans": 8}, source="my tests")


def test_variant_of_unknown_family():
    with pytest.raises(ValueError, match=r"unknown family 'fpm'.*'fpn'"):
        fpn_zoo.register_variant("fpn_bad_test", "fpm", source="my tests")


def test_register_neck_adds_a_family_usable_by_create_neck():
    @fpn_zoo.register_neck("tiny_test_family", override=True)
    def tiny_test_family(spec, *, out_channels: int = 8):
        return fpn_zoo.create_neck("fpn", spec, out_channels=out_channels)

    try:
        fpn_zoo.register_variant("tiny_test_variant", "tiny_test_family", {"out_channels": 4}, source="tests")
        neck = fpn_zoo.create_neck("tiny_test_variant", [8, 16])
        assert neck.feature_info.channels() == [4, 4]
    finally:
        _registry._state.variants.pop("tiny_test_variant", None)
        _registry._state.families.pop("tiny_test_family", None)


def test_a_key_twice_in_a_registry_yaml_is_an_error_naming_it(tmp_path):
    import yaml

    from fpn_zoo._registry import _read_yaml

    path = tmp_path / "variants.yaml"
    path.write_text("necks:\n  my_fpn:\n    family: fpn\n  other:\n    family: pan\n  my_fpn:\n    family: pan\n")
    with pytest.raises(yaml.YAMLError, match=r"'my_fpn' twice \(lines 2 and 6\)"):
        _read_yaml(path)
    path.write_text("necks:\n  my_fpn:\n    family: fpn\n    args: {out_channels: 8, out_channels: 16}\n")
    with pytest.raises(yaml.YAMLError, match="'out_channels' twice"):
        _read_yaml(path)
    with pytest.raises(ValueError, match="'out_channels' twice"):  # bad input: a ValueError too
        _read_yaml(path)


# ------------------------------------------------------------------------------------------ YAML and types


def test_yaml_merge_keys_work_and_explicit_keys_override_the_merged_ones(tmp_path):
    from fpn_zoo._registry import _read_yaml

    path = tmp_path / "variants.yaml"
    path.write_text(
        "x-common: &common {family: fpn, summary: shared, args: {out_channels: 8}}\n"
        "necks:\n"
        "  a:\n    <<: *common\n    summary: own\n"
        "  b:\n    <<: *common\n"
    )
    doc = _read_yaml(path)
    assert doc["necks"]["a"] == {"family": "fpn", "summary": "own", "args": {"out_channels": 8}}
    assert doc["necks"]["b"]["summary"] == "shared"
    path.write_text("x-c: &c {family: fpn}\nnecks:\n  a:\n    <<: *c\n    summary: s\n    summary: t\n")
    with pytest.raises(ValueError, match="'summary' twice"):  # a real duplicate next to a merge is still caught
        _read_yaml(path)


def test_a_document_with_anchors_and_merges_registers(fresh_registry):
    _registry._add_document({"x-common": {"family": "fpn"},
                             "necks": {"merged_fpn": {"family": "fpn", "args": {"out_channels": 8}}}}, "tests")
    assert fpn_zoo.neck_cfg("merged_fpn").args["out_channels"] == 8


@pytest.mark.parametrize("key, value, expected", [
    ("tags", "fpn", "a list of strings"),
    ("tags", [1, 2], "a list of strings"),
    ("summary", 3, "a string"),
    ("paper", ["x"], "a string"),
    ("override", "false", "true or false"),
    ("args", [1], "a mapping"),
    ("family", 7, "a family name"),
])
def test_wrongly_typed_variant_fields_are_errors_naming_variant_and_key(fresh_registry, key, value, expected):
    entry = {"family": "fpn", key: value}
    with pytest.raises(ValueError, match=rf"neck 'typed_probe' \(tests\): '{key}' must be {expected}"):
        _registry._add_document({"necks": {"typed_probe": entry}}, "tests")
    assert "typed_probe" not in _registry._state.variants


def test_a_document_registers_all_or_nothing(fresh_registry):
    with pytest.raises(ValueError, match="'nope'"):
        _registry._add_document({"necks": {"first_ok": {"family": "fpn"}, "second_bad": {"family": "nope"}}}, "tests")
    assert "first_ok" not in _registry._state.variants


# ------------------------------------------------------------------------------------------ loading


class _EntryPoint:
    """Stands in for an importlib.metadata entry point."""

    def __init__(self, name, load, module="fake_plugin_module"):
        self.name, self.value, self.module, self.dist, self._load = name, f"{module}:x", module, None, load

    def load(self):
        return self._load()


@pytest.fixture
def fresh_registry(monkeypatch):
    """An unloaded registry holding only the built-in families (restored afterwards); no installed plugins."""
    fpn_zoo.list_necks()
    fresh = _registry._State(families=dict(_registry._state.families))
    monkeypatch.setattr(_registry, "_state", fresh)
    monkeypatch.setattr(_registry.importlib.metadata, "entry_points", lambda group=None: [])
    return fresh


def test_a_second_thread_waits_for_the_first_threads_load(fresh_registry, monkeypatch):
    import threading
    import time

    read = _registry._read_yaml

    def slow_read(path):
        time.sleep(0.3)
        return read(path)

    monkeypatch.setattr(_registry, "_read_yaml", slow_read)
    results = {}
    first = threading.Thread(target=lambda: results.setdefault("first", len(fpn_zoo.list_necks())))
    first.start()
    time.sleep(0.05)  # the first thread is inside its load now
    try:
        results["second"] = fpn_zoo.neck_cfg("pan").family
    finally:
        first.join()
    assert results == {"first": len(yaml.safe_load(ROOT_YAML.read_text())["necks"]), "second": "pan"}


def test_a_failed_load_raises_leaves_nothing_behind_and_the_next_call_retries(fresh_registry, monkeypatch, tmp_path):
    broken = tmp_path / "registry.yaml"
    broken.write_text("necks:\n  ok_one: {family: fpn}\n  bad: {family: fpm}\n")
    good = _registry.registry_path()
    monkeypatch.setattr(_registry, "registry_path", lambda: broken)
    with pytest.raises(ValueError, match="'fpm'"):
        fpn_zoo.list_necks()
    assert _registry._state.status == _registry.UNLOADED and not _registry._state.variants
    monkeypatch.setattr(_registry, "registry_path", lambda: good)
    assert "pan" in fpn_zoo.list_necks()


def test_a_plugin_sees_the_partial_registry_while_it_loads(fresh_registry, monkeypatch):
    seen = {}

    def plugin():
        seen["pan"] = fpn_zoo.is_neck("pan")  # re-entrant: must neither deadlock nor reload
        return {"necks": {"reentrant_fpn": {"family": "fpn"}}}

    monkeypatch.setattr(_registry.importlib.metadata, "entry_points", lambda group=None: [_EntryPoint("re", plugin)])
    assert "reentrant_fpn" in fpn_zoo.list_necks() and seen == {"pan": True}


def test_a_skipped_plugin_leaves_nothing_and_its_names_say_it_failed(fresh_registry, monkeypatch):
    def plugin():
        @fpn_zoo.register_neck("half_plugin_family")
        def half_plugin_family(spec, *, out_channels: int = 8):
            return fpn_zoo.create_neck("fpn", spec, out_channels=out_channels)

        return {"necks": {"half_first": {"family": "half_plugin_family"},
                          "half_second": {"family": "half_plugin_family", "args": {"out_chans": 8}}}}

    monkeypatch.setattr(_registry.importlib.metadata, "entry_points", lambda group=None: [_EntryPoint("half", plugin)])
    with pytest.warns(RuntimeWarning, match=r"skipped plugin 'half'.*out_chans"):
        names = fpn_zoo.list_necks()
    assert "half_first" not in names and "pan" in names
    assert "half_plugin_family" not in fpn_zoo.list_families()
    with pytest.raises(ValueError, match=r"neck 'half_first' is not available: plugin 'half' .* failed to load"):
        fpn_zoo.create_neck("half_first", [8, 16])


# ------------------------------------------------------------------------------------------ factory


def test_create_model_suggests_close_timm_names():
    with pytest.raises(ValueError, match=r"unknown timm model 'resnet18x'; did you mean .*'resnet18'"):
        fpn_zoo.create_model("resnet18x")


def test_warnings_from_a_family_name_the_variant_asked_for_and_point_at_the_caller(fresh_registry):
    import warnings

    @fpn_zoo.register_neck("warning_probe_family")
    def warning_probe_family(spec, *, out_channels: int = 8):
        warnings.warn("internal_id3 is odd", FutureWarning)
        return fpn_zoo.create_neck("fpn", spec, out_channels=out_channels)

    fpn_zoo.register_variant("warning_probe", "warning_probe_family", source="tests")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fpn_zoo.create_neck("warning_probe", [8, 16])
    assert [(w.category, str(w.message)) for w in caught] == [(FutureWarning, "neck 'warning_probe': internal_id3 is odd")]
    assert caught[0].filename == __file__


def test_a_family_returning_no_feature_info_is_a_type_error_naming_it(fresh_registry):
    import torch.nn as nn

    @fpn_zoo.register_neck("no_info_family")
    def no_info_family(spec, *, out_channels: int = 8):
        return nn.Identity()

    fpn_zoo.register_variant("no_info", "no_info_family", source="tests")
    with pytest.raises(TypeError, match=r"family 'no_info_family' \(from .*test_registry.*no_info_family\).*feature_info"):
        fpn_zoo.create_neck("no_info", [8, 16])


def test_a_builtin_familys_warning_names_the_variant_asked_for():
    import warnings

    info = [dict(num_chs=16, reduction=16)] * 3  # a plain ViT's levels: the graph warns that it builds no pyramid
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fpn_zoo.create_neck("fpn", info, out_channels=8)
    (warning,) = caught
    assert warning.category is UserWarning and str(warning.message).startswith("neck 'fpn': ")
    assert warning.filename == __file__


# ------------------------------------------------------------------------------------------ composition


def test_chain_neck_builds_with_the_function_it_is_given_and_never_imports_the_factory():
    from fpn_zoo.necks.chain import ChainedNeck, chain_neck

    first = fpn_zoo.create_neck("simple_pyramid", fpn_zoo.FeatureSpec((16,), (16,)), out_channels=8)
    calls = []

    def build(name, features, **overrides):
        calls.append((name, overrides))
        return fpn_zoo.create_neck(name, features, **overrides)

    chained = chain_neck(first, "fpn", {"smooth_depth": 2}, inherit={"out_channels": 8}, build=build)
    assert isinstance(chained, ChainedNeck) and calls == [("fpn", {"out_channels": 8, "smooth_depth": 2})]
    with pytest.raises(TypeError, match="needs build="):  # outside create_neck, nothing is lent
        chain_neck(first, "fpn")
