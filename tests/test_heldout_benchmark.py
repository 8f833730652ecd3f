"""The held-out scoreboard's own arithmetic (benchmarks/heldout.py): the side-information counterfactual."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import heldout  # noqa: E402

from fedcodec.bdrate import bd_rate  # noqa: E402


def _set(z_bytes: list[float]) -> dict:
    hevc = [{"bpp": b, "dice": d} for b, d in ((0.02, 0.5), (0.04, 0.65), (0.08, 0.75), (0.16, 0.8), (0.4, 0.83))]
    codec = [{"bpp": b, "dice": d} for b, d in ((0.01, 0.45), (0.02, 0.6), (0.04, 0.72), (0.08, 0.79), (0.2, 0.82))]
    return {"set": "h1", "codecs": {"hevc": {"points": hevc}, "pretrained": {"points": codec, "kind": "learned"}},
            "hyper_latent": [{"quality": q + 1, "z_bytes": z} for q, z in enumerate(z_bytes)]}


def test_same_side_information_leaves_the_bd_rate_unchanged():
    s = _set([16] * 5)
    ref = s["codecs"]["hevc"]["points"]
    own = bd_rate([p["bpp"] for p in ref], [p["dice"] for p in ref],
                  [p["bpp"] for p in s["codecs"]["pretrained"]["points"]],
                  [p["dice"] for p in s["codecs"]["pretrained"]["points"]]).bd_rate_percent
    assert heldout.side_info_counterfactual(s, _set([16] * 5))["pretrained"] == pytest.approx(own)


def test_heavier_side_information_costs_bits():
    light = _set([16] * 5)
    same = heldout.side_info_counterfactual(light, _set([16] * 5))["pretrained"]
    heavier = heldout.side_info_counterfactual(light, _set([100] * 5))["pretrained"]
    # 84 more bytes per 256x256 image (+0.010 bpp) nearly doubles the lowest-rate point: tens of percent
    assert heavier - same > 20


def test_a_draw_that_slides_down_the_curve_counts_as_worse():
    s = _set([16] * 5)
    pre, hevc = s["codecs"]["pretrained"]["points"], s["codecs"]["hevc"]["points"]
    same = heldout.draw_summary(0, {"points": pre, "kept": 1.0, "selection": ""}, pre, hevc)
    assert same["bd_vs_pretrained"] == pytest.approx(0.0, abs=1e-6) and not same["worse"]
    # fewer bits at every quality but a lower top-quality Dice: worse however good the BD-rate looks
    slid = [{"bpp": p["bpp"] * 0.6, "dice": p["dice"] - (0.02 if i == 4 else 0.0)} for i, p in enumerate(pre)]
    d = heldout.draw_summary(1, {"points": slid, "kept": 1.0, "selection": ""}, pre, hevc)
    assert d["bd_vs_pretrained"] < 0 and d["worse"]
    # the same curve needing twice the bits: worse
    costly = [{"bpp": p["bpp"] * 2, "dice": p["dice"]} for p in pre]
    assert heldout.draw_summary(2, {"points": costly, "kept": 1.0, "selection": ""}, pre, hevc)["worse"]
    # a refused adaptation is the pretrained codec itself: never worse
    refused = heldout.draw_summary(3, {"points": pre, "kept": 0.0, "selection": "kept"}, pre, hevc)
    assert refused["bd_vs_pretrained"] == 0.0 and not refused["worse"]


def test_compare_table_refuses_runs_read_by_another_segmenter():
    """A compared run whose set was read by another segmenter (e.g. the CT site's earlier one) is not shown as
    a number beside this run's; the container version of every run is named when it differs."""
    def run(label, segmenter, bd, container):
        s = _set([16] * 5)
        s["segmenter"] = segmenter
        s["codecs"]["pretrained"]["bd_rate_vs_hevc"] = bd
        return {"label": label, "sets": [s], "container_version": container}

    this = run("now", {"crop": 256, "steps": 3000}, -10.0, 3)
    lines = heldout.compare_markdown(this, [run("same", {"crop": 256, "steps": 3000}, -5.0, 3),
                                            run("old", {"crop": 512, "steps": 1500}, 99.0, 2)])
    row = next(line for line in lines if line.startswith("| h1 | pretrained"))
    assert "-10.0 %" in row and "-5.0 %" in row and "other segmenter" in row and "+99.0" not in row
    assert "`old` 2" in lines[1] and "`same` 3" not in lines[1]


def test_stored_points_finds_a_codec_of_a_set_in_a_stored_run(tmp_path):
    import json

    (tmp_path / "results.json").write_text(json.dumps({"sets": [_set([16] * 5), {"set": "ct", "skipped": "x"}]}))
    assert heldout.stored_points(tmp_path, "h1") == _set([16] * 5)["codecs"]["hevc"]["points"]
    assert heldout.stored_points(tmp_path, "h1", "pretrained")[0]["bpp"] == 0.01
    assert heldout.stored_points(tmp_path, "ct") is None          # a set the run skipped
    assert heldout.stored_points(tmp_path, "h1", "jpeg2000") is None
    assert heldout.stored_points(tmp_path / "elsewhere", "h1") is None


def test_more_shots_extend_the_same_draw():
    import numpy as np

    _, eight, evaluation = heldout.site_data("h1", 2, 1)
    _, twelve, same_evaluation = heldout.site_data("h1", 2, 1, shots=12)
    assert len(eight) == 8 and len(twelve) == 12
    assert all(np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask) for a, b in zip(eight, twelve))
    assert all(np.array_equal(a.image, b.image) for a, b in zip(evaluation, same_evaluation))


def test_unannotated_scans_leave_out_the_shots_drop_the_masks_and_spread_over_the_archive():
    archive, shots, _ = heldout.site_data("h1", 1, 20)
    scans = heldout.unannotated_scans(archive, shots[:1], n=5)
    names = [s.name for s in archive if s.name != shots[0].name]
    positions = [names.index(s.name) for s in scans]
    assert len(scans) == 5 and positions[0] == 0 and positions[-1] == len(names) - 1
    assert all(b - a >= 3 for a, b in zip(positions, positions[1:]))   # spread, not the first five
    assert all(s.mask is None for s in scans) and shots[0].name not in {s.name for s in scans}
    assert all(a.mask is not None for a in archive)   # the archive itself keeps its annotations


def test_the_archive_check_calls_worse_what_the_scoreboard_calls_worse():
    from fedcodec.adapt import AdaptConfig

    assert (AdaptConfig.archive_bd_rate, AdaptConfig.archive_top_dice) == (heldout.WORSE_BD, heldout.WORSE_TOP_DICE)
