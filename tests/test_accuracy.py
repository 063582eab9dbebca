"""The accuracy benchmark: scenes, the COCO evaluation, and the whole pipeline on a tiny budget."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import fpn_zoo

pytest.importorskip("sklearn")
pytest.importorskip("pycocotools")

from fpn_zoo.accuracy import DigitScenes, Recipe, SceneConfig, coco_metrics, load_results, run_many  # noqa: E402
from fpn_zoo.accuracy.evaluate import METRICS, area_ranges  # noqa: E402
from fpn_zoo.accuracy.recipe import attachment, backbone_and_neck, build_detector, train_detector  # noqa: E402
from fpn_zoo.accuracy.regression_guard import RegressionWatch  # noqa: E402
from fpn_zoo.accuracy.runner import _cost, estimate_seconds  # noqa: E402
from fpn_zoo.accuracy.scenes import TEST_SEED, split_indices  # noqa: E402
from fpn_zoo.cli import main  # noqa: E402

TINY = Recipe(pretrain_steps=3, pretrain_batch=4, steps=3, batch=2, warmup=1, test_scenes=4,
              scenes=SceneConfig(canvas=64, min_size=8, max_size=32, max_digits=3))


# ------------------------------------------------------------------------------------------ scenes


def test_train_and_test_digits_are_disjoint_and_cover_the_set():
    train, test = split_indices("train", 1797), split_indices("test", 1797)
    assert not set(train.tolist()) & set(test.tolist())
    assert sorted(train.tolist() + test.tolist()) == list(range(1797))
    assert len(test) == 599


def test_a_scene_is_a_pure_function_of_split_seed_and_index():
    a, b = DigitScenes("test", TEST_SEED), DigitScenes("test", TEST_SEED)
    (img_a, tgt_a), (img_b, tgt_b) = a[7], b[7]
    assert torch.equal(img_a, img_b) and torch.equal(tgt_a["boxes"], tgt_b["boxes"])
    assert not torch.equal(a[7][0], a[8][0])
    assert not torch.equal(DigitScenes("train", TEST_SEED)[7][0], img_a)


@pytest.mark.parametrize("index", range(12))
def test_boxes_are_tight_around_the_pasted_ink(index):
    scenes = DigitScenes("train", 3, SceneConfig(max_digits=1, strokes=0))
    image, target, ink = scenes.render(index)
    assert image.shape == (3, 128, 128) and 0 <= image.min() and image.max() <= 1
    (x1, y1, x2, y2), = target["boxes"].int().tolist()
    inked = ink > DigitScenes.INK
    rows = torch.nonzero(inked.any(1)).flatten()
    cols = torch.nonzero(inked.any(0)).flatten()
    assert (y1, y2, x1, x2) == (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
    assert 0 <= int(target["labels"][0]) <= 9
    assert float(target["areas"][0]) == (x2 - x1) * (y2 - y1)


def test_scenes_have_small_medium_and_large_digits():
    scenes = DigitScenes("test", TEST_SEED)
    areas = torch.cat([scenes[i][1]["areas"] for i in range(60)])
    (_, small), (_, medium) = area_ranges(128)[1], area_ranges(128)[2]
    assert (areas < small).sum() > 10 and ((areas >= small) & (areas < medium)).sum() > 10 and (areas >= medium).sum() > 10


def test_bad_scene_config_is_a_value_error():
    with pytest.raises(ValueError, match="min_size"):
        SceneConfig(min_size=80, max_size=40)
    with pytest.raises(ValueError, match="split"):
        DigitScenes("val", 0)


# ------------------------------------------------------------------------------------------ evaluation


def _targets():
    return [{"boxes": torch.tensor([[10.0, 10, 20, 20], [40, 40, 90, 90]]), "labels": torch.tensor([3, 7])},
            {"boxes": torch.tensor([[5.0, 60, 30, 85]]), "labels": torch.tensor([1])}]


def _as_detections(targets, shift=0.0, labels=None):
    out = []
    for t in targets:
        n = len(t["labels"])
        out.append({"boxes": t["boxes"] + shift, "scores": torch.linspace(0.9, 0.5, n),
                    "labels": t["labels"] if labels is None else torch.full((n,), labels)})
    return out


def test_pycocotools_scores_perfect_shifted_and_missing_detections():
    targets = _targets()
    perfect = coco_metrics(targets, _as_detections(targets), 128)
    assert set(perfect) == set(METRICS)
    assert perfect["AP"] == pytest.approx(1.0) and perfect["AP_small"] == pytest.approx(1.0)
    shifted = coco_metrics(targets, _as_detections(targets, shift=4.0), 128)
    assert shifted["AP50"] > 0 and shifted["AP"] < perfect["AP"]  # the small box fails the strict IoUs first
    assert shifted["AP_small"] < shifted["AP_large"]
    wrong_class = coco_metrics(targets, _as_detections(targets, labels=0), 128)
    assert wrong_class["AP"] == 0.0
    assert coco_metrics(targets, _as_detections(targets, labels=0), 128, agnostic=True)["AP"] == pytest.approx(1.0)
    empty = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    assert coco_metrics(targets, empty, 128) == {m: 0.0 for m in METRICS}


def test_area_buckets_scale_with_the_canvas():
    assert area_ranges(128)[1][1] == 16**2 and area_ranges(128)[2][1] == 32**2
    assert area_ranges(256)[1][1] == 32**2


# ------------------------------------------------------------------------------------------ pipeline


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FPN_ZOO_CACHE", str(tmp_path / "cache"))
    return tmp_path


@pytest.mark.slow
def test_the_whole_pipeline_on_a_tiny_budget_and_resuming(cache):
    path = cache / "acc.json"
    outcomes = run_many(["fpn_bn_lrelu_64", "single_level_64"], [0], path, TINY)
    assert [o[2] for o in outcomes] == [None, None]
    data = load_results(path)
    assert data["recipes"][TINY.key()]["steps"] == 3
    assert {r["neck"] for r in data["results"]} == {"fpn_bn_lrelu_64", "single_level_64"}
    for r in data["results"]:
        assert r["recipe_key"] == TINY.key() and r["seed"] == 0
        for name, value in r["metrics"].items():
            assert 0.0 <= value <= 1.0, (name, value)
        assert set(r["metrics"]) == set(METRICS) | {f"agnostic_{m}" for m in METRICS}
        assert r["neck_params"] > 0 and r["neck_gflops"] > 0 and r["train_seconds"] > 0
        assert r["versions"]["torch"] == torch.__version__ and r["curve"][-1][0] == 3
        assert r["cpu"].endswith(f"({torch.backends.cpu.get_cpu_capability()})")  # which machine, for the docs
        (step, terms), (same_step, total) = r["loss_terms"][-1], r["losses"][-1]
        assert step == same_step == 3 and set(terms) == {"classification", "bbox_regression", "bbox_ctrness"}
        assert sum(terms.values()) == pytest.approx(total, abs=2e-4)  # running means of the terms sum to the total's
    fpn = next(r for r in data["results"] if r["neck"] == "fpn_bn_lrelu_64")
    single = next(r for r in data["results"] if r["neck"] == "single_level_64")
    assert single["neck_params"] < fpn["neck_params"]
    assert run_many(["fpn_bn_lrelu_64", "single_level_64"], [0], path, TINY) == []  # finished runs are kept
    assert list(cache.glob("cache/digits-backbone-*.pt"))  # pretrained once, cached


@pytest.mark.parametrize("neck, how", [("fpn_bn_lrelu_64", "levels"), ("nasfpn", "c3_c5"), ("bfp", "fpn_first"),
                                       ("yolof_dilated_encoder", "last_stage"), ("simple_pyramid", "last_stage")])
def test_every_kind_of_neck_is_attached_and_costed_whole(neck, how):
    """A neck that cannot read the four levels gets the first attachment it builds on; the recorded cost is
    everything between the backbone and the head (an FPN put first included)."""
    assert attachment(neck, TINY) == how
    torch.manual_seed(0)
    model = build_detector(neck, TINY)
    backbone, whole_neck = backbone_and_neck(model)
    assert all(i in backbone.feature_info.out_indices for i in TINY.out_indices[-1:])
    cost = _cost(model, TINY.scenes.canvas)
    assert cost["neck_params"] == sum(p.numel() for p in whole_neck.parameters())
    if how == "fpn_first":
        fpn = fpn_zoo.create_neck("fpn", fpn_zoo.FeatureSpec(tuple(backbone.feature_info.channels()),
                                                             tuple(backbone.feature_info.reduction())))
        assert cost["neck_params"] > sum(p.numel() for p in fpn.parameters())
    images, targets = DigitScenes("train", 0, TINY.scenes).batch(range(2))
    model.train()
    losses = model(list(images), targets)
    assert all(torch.isfinite(v) for v in losses.values())


def test_a_neck_that_builds_on_no_attachment_names_each_reason():
    with pytest.raises(ValueError, match="levels: .*c3_c5: .*last_stage: "):
        attachment("fpn", TINY, {"out_channels": -1})


def _tiny_detector(recipe):
    torch.manual_seed(0)
    return build_detector("fpn_bn_lrelu_64", recipe)


def _dead_detector(recipe):
    """A tiny detector whose box regression is negative at every location (bias -20: every box has zero size)."""
    model = _tiny_detector(recipe)
    with torch.no_grad():
        model.head.regression_head.bbox_reg.bias.fill_(-20.0)
    return model


class _Stop(Exception):
    pass


def _stop_at_evaluation(model):
    raise _Stop


def test_an_interrupted_run_resumes_from_its_checkpoint_to_the_same_weights(tmp_path):
    """Training stopped after step 2 (its checkpoint saved at every step) and started again ends with the
    weights, losses and curve of the run that was never stopped."""
    recipe = dataclasses.replace(TINY, steps=4, eval_every=2)
    curve_metrics = {"AP": 0.5}

    def fresh():
        return _tiny_detector(recipe)

    whole = fresh()
    expected = train_detector(whole, recipe, seed=1, evaluate=lambda m: curve_metrics)
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(_Stop):
        train_detector(fresh(), recipe, seed=1, evaluate=_stop_at_evaluation, checkpoint=ckpt,
                       checkpoint_seconds=0)
    assert torch.load(ckpt, weights_only=False)["step"] == 1  # saved after step 1; step 2 stopped in evaluate
    resumed_model = fresh()
    resumed = train_detector(resumed_model, recipe, seed=1, evaluate=lambda m: curve_metrics, checkpoint=ckpt,
                             checkpoint_seconds=0)
    for (name, a), b in zip(whole.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed["losses"] == expected["losses"] and resumed["curve"] == expected["curve"]
    assert resumed["loss_terms"] == expected["loss_terms"] and expected["loss_terms"]
    other_seed = train_detector(fresh(), recipe, seed=2, checkpoint=ckpt, checkpoint_seconds=1e9)
    assert other_seed["losses"] != expected["losses"]  # a checkpoint of another seed is not resumed


def test_a_dead_box_regression_is_revived_and_recorded():
    """A regression negative at every location (bias -20: every box has zero size) is re-initialised after
    ``revive_after`` steps in a row, and then predicts boxes of positive area again."""
    recipe = dataclasses.replace(TINY, steps=5)
    model = _dead_detector(recipe)
    layer = model.head.regression_head.bbox_reg
    trained = train_detector(model, recipe, seed=1, revive_after=3)
    assert trained["revived"] == [3]
    assert float(layer.bias.detach().abs().max()) < 1.0  # re-initialised (bias 0), then two small AdamW steps
    watch = RegressionWatch(layer)
    model.eval()
    with torch.no_grad():
        model([torch.rand(3, 64, 64)])
    watch.remove()
    assert watch.alive


def test_a_resumed_run_keeps_counting_dead_steps_from_its_checkpoint(tmp_path):
    """Dead from the start, stopped after step 1 (one dead step saved) and resumed: revived after step 3, as
    the uninterrupted run is (not after step 4, as a count restarted at 0 would be)."""
    recipe = dataclasses.replace(TINY, steps=4, eval_every=2)

    def train(**kwargs):
        return train_detector(_dead_detector(recipe), recipe, seed=1, revive_after=3, **kwargs)

    assert train(evaluate=lambda m: {})["revived"] == [3]
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(_Stop):
        train(evaluate=_stop_at_evaluation, checkpoint=ckpt, checkpoint_seconds=0)
    assert train(evaluate=lambda m: {}, checkpoint=ckpt)["revived"] == [3]


def test_a_dead_regression_is_left_dead_when_the_guard_is_off():
    recipe = dataclasses.replace(TINY, steps=4)
    model = _dead_detector(recipe)
    trained = train_detector(model, recipe, seed=1, revive_after=0)
    assert trained["revived"] == [] and float(model.head.regression_head.bbox_reg.bias.detach().max()) < -19


def test_the_guard_changes_nothing_in_a_run_whose_regression_lives():
    recipe = dataclasses.replace(TINY, steps=4)
    guarded, plain = _tiny_detector(recipe), _tiny_detector(recipe)
    a = train_detector(guarded, recipe, seed=1, revive_after=1)
    b = train_detector(plain, recipe, seed=1, revive_after=0)
    assert a["revived"] == [] and a["losses"] == b["losses"]
    for (name, x), y in zip(guarded.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(x, y), name


def test_the_watch_needs_positive_width_and_height():
    conv = torch.nn.Conv2d(1, 4, 1)
    watch = RegressionWatch(conv)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.copy_(torch.tensor([1.0, -1.0, 1.0, -1.0]))  # l, r > 0 but t, b <= 0: zero height
        conv(torch.zeros(1, 1, 2, 2))
        assert not watch.alive
        conv.bias.copy_(torch.tensor([-1.0, 1.0, 0.0, -1.0]))  # t > 0 only: zero width
        conv(torch.zeros(1, 1, 2, 2))
        assert not watch.alive
        conv.bias.copy_(torch.tensor([-1.0, 1.0, 0.5, -1.0]))  # r and t > 0: a box of positive area
        conv(torch.zeros(1, 1, 2, 2))
        assert watch.alive
    watch.reset()
    assert not watch.alive
    watch.remove()


@pytest.mark.slow
def test_cli_runs_resumes_and_prints_the_table(cache, monkeypatch, capsys):
    import fpn_zoo.accuracy

    monkeypatch.setattr(fpn_zoo.accuracy, "Recipe", lambda: TINY)
    path = cache / "acc.json"
    assert main(["accuracy", "no_top_down_64", "--seeds", "0", "--json", str(path), "-q"]) == 0
    out = capsys.readouterr().out
    assert "no_top_down_64" in out and "agnostic AP" in out
    assert main(["accuracy", "no_top_down_64", "--seeds", "0", "--json", str(path), "-q"]) == 0
    assert "already in" in capsys.readouterr().err
    assert len(json.loads(path.read_text())["results"]) == 1


@pytest.mark.slow
def test_cli_estimates_how_long_the_runs_left_take_without_running_them(cache, monkeypatch, capsys):
    import fpn_zoo.accuracy

    monkeypatch.setattr(fpn_zoo.accuracy, "Recipe", lambda: TINY)
    path = cache / "acc.json"
    assert main(["accuracy", "no_top_down_64", "single_level_64", "--seeds", "0,1", "--json", str(path),
                 "--estimate", "--jobs", "2", "-q"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("no_top", "single"))}
    assert set(rows) == {"no_top_down_64", "single_level_64"} and all(r[1] == "2" for r in rows.values())
    assert "total:" in out and "--jobs 2" in out
    data = json.loads(path.read_text())
    assert data["results"] == []  # nothing was run
    recorded = data["estimates"][TINY.key()]
    assert set(recorded) == {"no_top_down_64", "single_level_64"} and all(e["minutes"] >= 0 for e in recorded.values())
    assert all(e["cpu"] and e["threads"] == 1 for e in recorded.values())  # where the estimate was made
    est = estimate_seconds("no_top_down_64", TINY, timed_steps=1, eval_scenes=1)
    assert est["train"] > 0 and est["eval"] > 0


def test_cli_refuses_unknown_necks_and_missing_names(capsys, tmp_path):
    assert main(["accuracy", "fpn_bn_lrelu_46", "--json", str(tmp_path / "a.json")]) == 2
    assert "did you mean" in capsys.readouterr().err
    assert main(["accuracy", "--json", str(tmp_path / "a.json")]) == 2
    assert "--all" in capsys.readouterr().err
    assert main(["accuracy", "fpn", "--seeds", "a,b"]) == 2


def test_a_results_file_of_another_kind_is_refused(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="no fpn_zoo accuracy results file"):
        load_results(path)


def test_the_recipe_key_follows_every_field():
    assert Recipe().key() == Recipe().key()
    assert dataclasses.replace(Recipe(), steps=10).key() != Recipe().key()
    assert Recipe().key("backbone") == dataclasses.replace(Recipe(), steps=10).key("backbone")
