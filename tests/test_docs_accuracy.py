"""The accuracy results in the generated docs: accuracy.md's table, the AP cells, the questions' sentences (a
difference claimed only beyond the seed spread), the Pareto front, and how ``--check`` treats the plots.

A synthetic results file in tmp_path stands in for docs/accuracy.json; no latency is measured."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

import fpn_zoo
from fpn_zoo.accuracy.recipe import Recipe
from fpn_zoo.measure import Reference
from tools import docs_gen
from tools.docs_gen.accuracy import REPRO_TOLERANCE, Accuracy, Measured, compare, leave_one_out, pareto_front

SMALL = Reference(size=(64, 64))

# AP per seed: 128 channels clearly above the 64-channel FPN (tiny spread); PAN within a large spread of it;
# 256 channels with a single seed; fpn_deep3_bn_lrelu_64 and fpn not measured at all.
APS = {
    "fpn_bn_lrelu_64": [0.500, 0.505, 0.495],
    "fpn_bn_lrelu_128": [0.560, 0.562, 0.558],
    "pan_bn_lrelu_64": [0.47, 0.55, 0.51],
    "fpn_bn_lrelu_256": [0.58],
}
NAMES = ["fpn_bn_lrelu_64", "fpn_bn_lrelu_128", "fpn_bn_lrelu_256", "pan_bn_lrelu_64", "fpn_deep3_bn_lrelu_64", "fpn"]


def record(neck, seed, ap, recipe_key, **extra):
    metrics = {"AP": ap, "AP50": ap + 0.3, "AP75": ap + 0.05, "AP_small": ap - 0.2, "AP_medium": ap,
               "AP_large": ap + 0.1, "AR100": ap + 0.2}
    metrics.update({f"agnostic_{k}": min(1.0, v + 0.1) for k, v in list(metrics.items())})
    return {"neck": neck, "seed": seed, "neck_args": {}, "recipe_key": recipe_key, "metrics": metrics,
            "neck_params": 123_456, "detector_params": 2_000_000, "neck_gflops": 0.0421, "train_seconds": 600.0,
            "eval_seconds": 20.0, "threads": 1, "losses": [[50, 2.0], [100, 1.0]],
            "curve": [[50, {"AP": ap / 2, "agnostic_AP": ap / 2 + 0.1}], [100, {"AP": ap, "agnostic_AP": ap + 0.1}]],
            "versions": {"torch": "x"}, "machine": "x86_64", "processor": "", "finished": "2026-12-01T00:00:00+00:00",
            **extra}


@pytest.fixture
def results(tmp_path):
    key = Recipe().key()
    runs = [record(n, s, ap, key) for n, aps in APS.items() for s, ap in enumerate(aps)]
    runs.append(record("fpn_bn_lrelu_64", 0, 0.9, "someoldrecipe"))  # another recipe: not shown
    runs.append(record("fpn_bn_lrelu_64", 5, 0.9, key, neck_args={"out_channels": 32}))  # overridden: not shown
    path = tmp_path / "accuracy.json"
    estimates = {key: {"fpn_deep3_bn_lrelu_64": {"minutes": 30.0}, "fpn": {"minutes": 150.0}}}
    path.write_text(json.dumps({"about": "test", "recipes": {key: Recipe().as_dict()}, "results": runs,
                                "estimates": estimates}))
    return path


def generate(results, names=NAMES, **kwargs):
    kwargs.setdefault("questions", False)
    return docs_gen.generate(list(names), reference=SMALL, latency_reps=0, results=results, **kwargs)


def table_rows(text):
    """``{variant: [cells]}`` of the rows that start with a variant link, in order."""
    return {m.group(1): [c.strip() for c in m.group(2).split("|")]
            for m in re.finditer(r"^\| \[([\w]+)\]\(necks/\w+\.md\) \|(.*)\|$", text, re.M)}


def test_accuracy_page_lists_means_stds_and_the_unmeasured(results):
    files = generate(results)
    text = files["accuracy.md"]
    rows = table_rows(text.split("## Results")[1].split("## AP against")[0])
    assert list(rows) == sorted(APS, key=lambda n: -np.mean(APS[n]))  # sorted by AP, measured only
    for name, aps in APS.items():
        cells = rows[name]
        assert cells[0] == str(len(aps))
        std = f"{np.std(aps, ddof=1):.3f}" if len(aps) > 1 else "—"
        assert cells[1] == f"{np.mean(aps):.3f} ± {std}", name
        assert cells[4] == f"{np.mean(aps) - 0.2:.3f}"  # AP_small
        assert cells[7] == f"{np.mean(aps) + 0.1:.3f}"  # agnostic AP
        assert cells[8:11] == ["0.123", "0.042", "n/a ms"]
    missing = text.split("## Not measured yet")[1]
    assert "[fpn_deep3_bn_lrelu_64](necks/fpn_deep3_bn_lrelu_64.md)" in missing and "[fpn](necks/fpn.md)" in missing
    assert "2 runs of other recipes" in missing
    assert "](assets/accuracy.png)" in text and "](assets/accuracy_curves.png)" in text
    assert isinstance(files["assets/accuracy.png"], docs_gen.Png)
    assert isinstance(files["assets/accuracy_curves.png"], docs_gen.Png)  # every measured one is original-notes


def test_reproducibility_section_holds_every_held_out_run_to_the_tolerance(results):
    acc = Accuracy.from_data(json.loads(results.read_text()))
    devs = {(n, s): d for n, s, d in leave_one_out(acc)}
    # only variants with 3 seeds; each run against the mean of the other two
    assert set(devs) == {(n, s) for n in ("fpn_bn_lrelu_64", "fpn_bn_lrelu_128", "pan_bn_lrelu_64") for s in range(3)}
    assert devs[("pan_bn_lrelu_64", 0)] == pytest.approx(0.47 - (0.55 + 0.51) / 2)
    text = generate(results)["accuracy.md"]
    section = text.split("## Reproducibility")[1].split("##")[0]
    assert f"±{REPRO_TOLERANCE}" in section
    assert "7 of 9 held-out runs" in section  # pan: seeds 0 and 1 are 0.06 from the mean of the other two
    assert "Not held to it: [pan_bn_lrelu_64]" in section and "fpn_bn_lrelu_128" not in section
    assert "more than one machine" not in section  # every run from one (unrecorded) CPU


def test_reproducibility_section_says_when_the_runs_come_from_several_cpus(results):
    data = json.loads(results.read_text())
    for r in data["results"][:2]:
        r["cpu"] = "Some CPU (AVX512)"
    section = generate(data)["accuracy.md"].split("## Reproducibility")[1].split("##")[0]
    assert "more than one machine" in section and "2 on Some CPU (AVX512)" in section


def test_the_unmeasured_carry_their_estimates_and_the_whole_table_its_time(results):
    text = generate(results)["accuracy.md"]
    section = text.split("## Not measured yet")[1].split("##")[0]
    assert "[fpn_deep3_bn_lrelu_64](necks/fpn_deep3_bn_lrelu_64.md) (30 min)" in section
    assert "[fpn](necks/fpn.md) (2.5 h)" in section
    # seed 0 of the 4 measured variants: 4 x (600 + 20) s = 0.7 h; estimated 3 h; two cores: half
    assert "about 4 h of single-thread runs — 0.7 h measured, 3 h estimated for the 2 runs left" in section
    assert "the longest: fpn (2.5 h), fpn_deep3_bn_lrelu_64 (30 min)" in section


def test_estimates_from_more_than_one_machine_say_so(results):
    data = json.loads(results.read_text())
    section = generate(results)["accuracy.md"].split("## Not measured yet")[1].split("##")[0]
    assert "more than one machine" not in section  # one (unrecorded) machine: nothing to say
    next(iter(data["estimates"].values()))["fpn"]["cpu"] = "Some CPU (AVX512)"
    results.write_text(json.dumps(data))
    section = generate(results)["accuracy.md"].split("## Not measured yet")[1].split("##")[0]
    assert "The estimates come from more than one machine (1 on Some CPU (AVX512), 1 on an unrecorded CPU)" \
        in section or "(1 on an unrecorded CPU, 1 on Some CPU (AVX512))" in section


def test_ap_cells_of_the_variants_table_and_the_pages(results):
    files = generate(results)
    rows = table_rows(files["variants.md"])
    header = next(line for line in files["variants.md"].splitlines() if line.startswith("| variant"))
    ap = [c.strip() for c in header.strip("|").split("|")].index("[AP](accuracy.md)") - 1
    aps = APS["fpn_bn_lrelu_128"]
    assert rows["fpn_bn_lrelu_128"][ap] == f"{np.mean(aps):.3f} ± {np.std(aps, ddof=1):.3f}"
    assert rows["fpn_bn_lrelu_256"][ap] == "0.580"  # one seed: no ±
    assert rows["fpn"][ap] == "—"
    page = files["necks/fpn_bn_lrelu_128.md"]
    section = page.split("## Accuracy\n")[1].split("\n## ")[0]
    assert f"{np.mean(aps):.3f} ± {np.std(aps, ddof=1):.3f}" in section and "3 seeds: 0, 1, 2" in section
    assert f"{np.mean(aps) - 0.2:.3f} ±" in section and f"{np.mean(aps) + 0.1:.3f} ±" in section
    unmeasured = files["necks/fpn.md"].split("## Accuracy\n")[1].split("\n## ")[0]
    assert "Not measured yet" in unmeasured
    assert "fpn-zoo accuracy fpn --seeds 0,1,2 --json docs/accuracy.json" in unmeasured


def test_questions_claim_a_difference_only_beyond_the_seed_spread(results):
    text = generate(results, names=["fpn"], questions=True)["questions.md"]
    bullets = {m.group(1): m.group(2) for m in re.finditer(r"^- (.+?) \(`\w+` vs `\w+`\): (.*)$", text, re.M)}
    assert "AP +0.060, more than twice the larger seed std" in bullets["128 channels"]
    assert "**higher**" in bullets["128 channels"]
    assert bullets["bottom-up path, 64 ch"].startswith("AP +0.010 (larger seed std 0.040): within the seed spread: "
                                                       "no difference shown")
    assert "**" not in bullets["bottom-up path, 64 ch"] and "**" not in bullets["256 channels"]
    assert "has one seed, so the seed spread is unknown" in bullets["256 channels"]
    assert bullets["three blocks"] == "`fpn_deep3_bn_lrelu_64` not measured yet."
    assert "not measured yet" in bullets["the top-down path"]
    assert "cannot measure" not in text
    row = next(line for line in text.splitlines() if line.startswith("| 128 channels"))
    assert row.endswith(f"| {np.mean(APS['fpn_bn_lrelu_128']) - np.mean(APS['fpn_bn_lrelu_64']):+.3f} |")


def test_compare_follows_the_rule_at_its_boundary():
    def m(name, aps):
        return Measured(name, [{"seed": i, "metrics": {"AP": a}} for i, a in enumerate(aps)])

    base = m("a", [0.49, 0.51])  # std 0.01414
    spread = float(np.std([0.49, 0.51], ddof=1))
    assert compare(m("b", [0.5 + 2 * spread + 0.001] * 2), base).shown
    assert not compare(m("b", [0.5 + 2 * spread - 0.001] * 2), base).shown
    assert compare(m("b", [0.40, 0.40]), base).sign == -1
    assert not compare(m("b", [0.9]), base).shown  # one seed: never a claim
    assert compare(None, base).text == "not measured yet"


def test_pareto_front_marks_the_points_no_cheaper_one_beats():
    points = [(1.0, 0.30), (2.0, 0.50), (2.5, 0.45), (3.0, 0.50), (4.0, 0.60), (0.5, 0.20), (2.0, 0.40),
              (5.0, 0.55)]
    assert pareto_front(points) == [5, 0, 1, 4]
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 0.5), (1.0, 0.5)]) == [0]


def test_without_results_the_pages_say_nothing_is_measured(tmp_path):
    files = generate(tmp_path / "absent.json", names=["fpn", "pan"])
    assert "No variant has been measured yet" in files["accuracy.md"]
    assert "2 registered variants have no run" in files["accuracy.md"]
    assert not any(k.endswith(".png") for k in files)
    assert "Not measured yet" in files["necks/pan.md"]
    assert all(row[5] == "—" for row in table_rows(files["variants.md"]).values())
    assert docs_gen.load_accuracy(tmp_path / "absent.json").by_neck == {}


def test_check_requires_the_plots_but_does_not_compare_them(results, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "docs"
    files = generate(results, names=["fpn_bn_lrelu_64", "pan_bn_lrelu_64"])
    docs_gen.write(out, files)
    png = out / "assets" / "accuracy.png"
    assert png.read_bytes().startswith(b"\x89PNG")
    png.write_bytes(b"not the same image")
    assert docs_gen.check(out, files) == []
    png.unlink()
    assert [s for s in docs_gen.check(out, files) if "accuracy.png: missing" in s]


def test_readme_table_has_the_ap_column(results):
    acc = docs_gen.load_accuracy(results)
    table = docs_gen.readme_table(accuracy=acc)
    assert "| [AP](docs/accuracy.md) |" in table.splitlines()[2]
    aps = APS["fpn_bn_lrelu_64"]
    row = next(line for line in table.splitlines() if line.startswith("| [`fpn_bn_lrelu_64`]"))
    assert f"| {np.mean(aps):.3f} ± {np.std(aps, ddof=1):.3f} |" in row
    assert isinstance(acc, Accuracy) and len(fpn_zoo.list_necks()) > len(acc.by_neck)


def test_variants_whose_classification_lags_are_named_under_the_table(results):
    text = generate(results)["accuracy.md"]
    assert "Classification lags" not in text  # every synthetic AP is within 0.1 of its agnostic AP
    data = json.loads(results.read_text())
    for r in data["results"]:
        if r["neck"] == "fpn_bn_lrelu_256":  # finds the digits (0.6) but names few of them (0.05)
            r["metrics"].update(AP=0.05, agnostic_AP=0.6)
    text = generate(data)["accuracy.md"]
    note = text.split("## Results")[1].split("## AP against")[0].split("Classification lags")[1]
    note = note.split("Still climbing")[0]
    assert "[fpn_bn_lrelu_256](necks/fpn_bn_lrelu_256.md) (AP 0.050, agnostic AP 0.600" in note
    assert "fpn_bn_lrelu_64]" not in note and "fpn_bn_lrelu_128" not in note


def test_runs_that_detected_nothing_are_named_with_their_loss(results):
    assert "detected nothing" not in generate(results)["accuracy.md"]
    data = json.loads(results.read_text())
    dead = next(r for r in data["results"] if r["neck"] == "fpn_bn_lrelu_128" and r["seed"] == 1)
    dead["metrics"].update(AP=0.0, agnostic_AP=0.0)
    dead["curve"] = [[50, {"AP": 0.0, "agnostic_AP": 0.0}], [100, {"AP": 0.0, "agnostic_AP": 0.0}]]
    dead["losses"] = [[50, 2.5], [100, 1.8]]
    almost = next(r for r in data["results"] if r["neck"] == "fpn_bn_lrelu_64" and r["seed"] == 2)
    almost["metrics"].update(AP=0.0, agnostic_AP=0.0)  # nothing at the end, but it had detected something before
    text = generate(data)["accuracy.md"]
    note = text.split("## Reproducibility")[1].split("## Not measured")[0].split("detected nothing")[1]
    assert "[fpn_bn_lrelu_128](necks/fpn_bn_lrelu_128.md) seed 1 (final loss 1.80 against 1.00 for its other seeds)" \
        in note
    assert "fpn_bn_lrelu_64]" not in note and "benchmarks/fcos_dead_regression.py" in note
    dead["loss_terms"] = [[100, {"classification": 0.2, "bbox_regression": 1.0, "bbox_ctrness": 0.6}]]  # newer runs
    assert "other seeds; box-regression loss 1.000)" in generate(data)["accuracy.md"]


def test_runs_whose_regression_was_revived_are_named_with_the_steps(results):
    assert "re-initialised**" not in generate(results)["accuracy.md"]
    data = json.loads(results.read_text())
    next(r for r in data["results"] if r["neck"] == "fpn_bn_lrelu_128" and r["seed"] == 1)["revived"] = [10, 40]
    next(r for r in data["results"] if r["neck"] == "fpn_bn_lrelu_64" and r["seed"] == 2)["revived"] = []
    text = generate(data)["accuracy.md"].split("## Reproducibility")[1].split("## Not measured")[0]
    note = text.split("re-initialised**")[1]
    assert "[fpn_bn_lrelu_128](necks/fpn_bn_lrelu_128.md) seed 1 (after step 10, 40)" in note
    assert "fpn_bn_lrelu_64]" not in note


def test_kept_latency_is_written_and_only_the_variants_without_one_are_timed(results):
    files = docs_gen.generate(["fpn_bn_lrelu_64", "fpn_bn_lrelu_128"], reference=SMALL, latency_reps=1,
                              results=results, questions=False, parity=False, accuracy=False,
                              known_latency={"fpn_bn_lrelu_64": 123.0})
    rows = table_rows(files["variants.md"])
    assert "123.00 ms" in rows["fpn_bn_lrelu_64"]
    timed = [c for c in rows["fpn_bn_lrelu_128"] if c.endswith(" ms")]
    assert timed and timed[0] not in ("n/a ms", "123.00 ms")


def test_variants_still_climbing_at_the_end_are_named_against_the_median_rise(results):
    # the synthetic curves end at the final AP, from ap / 2 at step 50: every variant rose by ap / 2 (0.24-0.29)
    text = generate(results)["accuracy.md"]
    note = text.split("## Results")[1].split("## AP against")[0].split("Still climbing")[1]
    assert "[fpn_bn_lrelu_64](necks/fpn_bn_lrelu_64.md) (AP 0.250 → 0.500 from step 50 to 100" in note
    assert "median +0.268" in note  # of 0.250, 0.255 (pan), 0.280 and 0.290
    data = json.loads(results.read_text())
    for r in data["results"]:  # now only fpn_bn_lrelu_128 climbs steeply over its last interval
        ap = r["metrics"]["AP"]
        gain = 0.15 if r["neck"] == "fpn_bn_lrelu_128" else 0.02
        r["curve"] = [[50, {"AP": ap - gain, "agnostic_AP": ap}], [100, {"AP": ap, "agnostic_AP": ap + 0.1}]]
    text = generate(data)["accuracy.md"]
    note = text.split("## Results")[1].split("## AP against")[0].split("Still climbing")[1]
    assert "[fpn_bn_lrelu_128](necks/fpn_bn_lrelu_128.md) (AP 0.410 → 0.560 from step 50 to 100; agnostic AP " \
           "0.560 → 0.660)" in note
    assert "fpn_bn_lrelu_64]" not in note and "median +0.020" in note
    for r in data["results"]:
        r["curve"] = r["curve"][-1:]  # no interval to climb over
    assert "Still climbing" not in generate(data)["accuracy.md"]


def test_variant_pages_give_the_learning_curve(results):
    page = generate(results)["necks/fpn_bn_lrelu_64.md"]
    section = page.split("## Accuracy")[1]
    assert "Learning curve (mean over the seeds): AP 0.250 / 0.500 at steps 50 / 100; agnostic AP 0.350 / 0.600." \
        in section
    assert "Learning curve (one seed): AP 0.290 / 0.580 at steps 50 / 100" in generate(results)[
        "necks/fpn_bn_lrelu_256.md"]
    assert "Learning curve" not in generate(results)["necks/fpn.md"]  # not measured
