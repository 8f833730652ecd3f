"""Adaptation, the loss, pretraining and the task network, on tiny models."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY_TASK_FEATURES, make_tiny_codec
from fedcodec.adapt import AdaptConfig, DPConfig, adapt, samples_to_tensors
from fedcodec.codec import group_of
from fedcodec.data import make_phantoms
from fedcodec.errors import DataError, ModelFileError
from fedcodec.losses import LabelMapDiscriminator, LossWeights, SemanticLoss, default_quality_weights
from fedcodec.model_io import load_codec, load_task
from fedcodec.task_net import build_task_network, freeze, load_task_network


@pytest.fixture(scope="module")
def task_net(tiny_task_path):
    return load_task(tiny_task_path)


@pytest.fixture(scope="module")
def shots():
    return make_phantoms(2, seed=11, size=128, hospital=2)


@pytest.fixture
def coded_shots(shots):
    """A tiny codec's forward pass on the two shots at qualities 0 and 3: ``(codec, images, masks, q, out)``."""
    codec = make_tiny_codec(0)
    images, masks = samples_to_tensors(shots)
    q = torch.tensor([0, 3])
    return codec, images, masks, q, codec(images, q)


def test_adapt_changes_only_the_subset(task_net, shots):
    codec = make_tiny_codec(0)
    before = {k: v.clone() for k, v in codec.state_dict().items()}
    result = adapt(codec, task_net, shots[:1], AdaptConfig(steps=4, lr=1e-2, select="none"))
    after = codec.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    trained = {k for k in changed if group_of(k) != "base"}
    assert trained, "adaptation changed nothing"
    # only adaptable parameters and the entropy coder's derived tables may differ
    assert all(group_of(k) != "base" or k.endswith(("_quantized_cdf", "_offset", "_cdf_length")) for k in changed)
    assert set(result.state) == set(codec.group_state_dict())
    assert result.metrics["examples"] == 1 and result.metrics["epsilon"] == 0.0


def test_adapt_policy_only_keeps_adapters(task_net, shots):
    codec = make_tiny_codec(0)
    adapters = codec.group_state_dict(["adapters"])
    result = adapt(codec, task_net, shots, AdaptConfig(steps=3, groups=("policy",)))
    assert all(torch.equal(adapters[k], v) for k, v in codec.group_state_dict(["adapters"]).items())
    assert set(result.state) == set(codec.group_state_dict(["policy"]))


def test_adapt_reduces_the_loss(task_net, shots):
    codec = make_tiny_codec(0)
    images, masks = samples_to_tensors(shots)
    loss_fn = SemanticLoss(LossWeights(), codec.num_qualities)

    def loss() -> float:
        with torch.no_grad():
            out = codec(images, 1)
            return float(loss_fn(out, images, masks, torch.tensor([1, 1]), task_net, codec)["loss"])

    first = loss()
    adapt(codec, task_net, (images, masks), AdaptConfig(steps=25, lr=1e-2, qualities=(1,)))
    assert loss() < first


def test_fedprox_pulls_towards_the_global_subset(task_net, shots):
    free, prox = make_tiny_codec(0), make_tiny_codec(0)
    anchor = free.group_state_dict()
    adapt(free, task_net, shots, AdaptConfig(steps=5, lr=1e-2, seed=1, prox_mu=0.0, select="none"))
    adapt(prox, task_net, shots, AdaptConfig(steps=5, lr=1e-2, seed=1, prox_mu=50.0, select="none"),
          global_state=anchor)

    def dist(c):
        return sum(float((v - anchor[k]).norm() ** 2) for k, v in c.group_state_dict().items())

    assert dist(prox) < dist(free)


def test_dp_sgd_epsilon_composes_across_rounds(task_net, shots):
    codec = make_tiny_codec(0)
    cfg = AdaptConfig(steps=2, dp=DPConfig(noise_multiplier=1.0, max_grad_norm=1.0))
    first = adapt(codec, task_net, shots, cfg)
    second = adapt(codec, task_net, shots, cfg, dp_history=first.dp_history)
    assert 0 < first.metrics["epsilon"] < second.metrics["epsilon"]
    assert len(second.dp_history) > len(first.dp_history) or \
        second.dp_history[-1][-1] > first.dp_history[-1][-1]  # more steps accounted
    assert all(torch.isfinite(v).all() for v in second.state.values())


def test_adapt_rejects_unannotated(task_net):
    unlabeled = [make_phantoms(1, seed=0, size=64)[0]]
    unlabeled = [type(unlabeled[0])(unlabeled[0].image, None, "u", 8, (0.0, 255.0))]
    with pytest.raises(DataError, match="masks"):
        adapt(make_tiny_codec(0), task_net, unlabeled, AdaptConfig(steps=1))
    with pytest.raises(DataError, match="at least one"):
        adapt(make_tiny_codec(0), task_net, [], AdaptConfig(steps=1))


def test_loss_terms_and_discriminator(task_net, coded_shots):
    codec, images, masks, q, out = coded_shots
    plain = SemanticLoss(LossWeights(lambda_t=1.0), 4)(out, images, masks, q, task_net, codec)
    assert plain["per_sample"].shape == (2,) and plain["task"] > 0 and plain["adv"] == 0
    disc = LabelMapDiscriminator()
    adv = SemanticLoss(LossWeights(lambda_t=1.0, lambda_adv=0.5), 4, discriminator=disc)(
        out, images, masks, q, task_net, codec)
    assert adv["adv"] > 0 and adv["loss"] > plain["loss"]
    assert disc.loss(images, masks.float(), torch.rand_like(images)) > 0
    w = default_quality_weights(8)
    assert w[0] < w[-1] and len(w) == 8


def test_task_weight_zero_leaves_rate_and_distortion_only(task_net, coded_shots):
    codec, images, masks, q, out = coded_shots
    semantic = SemanticLoss(LossWeights(lambda_t=1.0), 4)
    mixed = semantic(out, images, masks, q, task_net, codec, task_weight=torch.tensor([0.0, 1.0]))
    plain = semantic(out, images, masks, q, task_net, codec)
    rd_only = SemanticLoss(LossWeights(lambda_t=0.0), 4)(out, images, masks, q, None, codec)
    assert torch.allclose(mixed["per_sample"][0], rd_only["per_sample"][0])
    assert torch.allclose(mixed["per_sample"][1], plain["per_sample"][1])
    assert plain["per_sample"][0] > mixed["per_sample"][0]


def test_hyper_rate_weight_charges_the_side_information_only(task_net, coded_shots):
    codec, images, masks, q, out = coded_shots
    plain = SemanticLoss(LossWeights(lambda_t=1.0), 4)(out, images, masks, q, task_net, codec)
    heavy = SemanticLoss(LossWeights(lambda_t=1.0), 4, hyper_rate_weight=3.0)(out, images, masks, q, task_net, codec)
    z_bpp = -torch.log2(out["likelihoods"]["z"]).flatten(1).sum(1) / (images.shape[-2] * images.shape[-1])
    assert float(z_bpp.min()) > 0
    torch.testing.assert_close(heavy["per_sample"] - plain["per_sample"], 2.0 * z_bpp)
    assert heavy["bpp"] == plain["bpp"]   # the reported rate stays the real estimate
    # one weight per quality: each sample's side information is charged at its own quality's weight
    per_quality = [5.0, 1.0, 2.0, 0.5]
    graded = SemanticLoss(LossWeights(lambda_t=1.0), 4, hyper_rate_weight=per_quality)(
        out, images, masks, q, task_net, codec)
    expected = (torch.tensor(per_quality)[q] - 1.0) * z_bpp
    torch.testing.assert_close(graded["per_sample"] - plain["per_sample"], expected)
    assert len(set(q.tolist())) > 1   # the shots are coded at several qualities, so the weights differ
    for bad in (float("nan"), [1.0, 2.0], [1.0, -1.0, 1.0, 1.0]):
        with pytest.raises(ValueError, match="hyper_rate_weight"):
            SemanticLoss(LossWeights(), 4, hyper_rate_weight=bad)


def test_random_intensity_windows_stretch_a_share_of_the_batch_to_the_whole_range():
    import numpy as np

    from fedcodec.training_data import random_intensity_windows

    x = 0.3 + 0.5 * torch.rand(64, 1, 32, 32)          # phantom-like crops: 0.3-0.8
    y, chosen, windows = random_intensity_windows(x, np.random.default_rng(1), 0.5)
    assert chosen.dtype == torch.bool and 16 < int(chosen.sum()) < 48
    assert torch.equal(y[~chosen], x[~chosen])           # the rest is untouched
    assert y.min() >= 0 and y.max() <= 1
    spans = (y[chosen].amax((1, 2, 3)) - y[chosen].amin((1, 2, 3)))
    assert bool((spans > 0.75).all())                    # every re-windowed crop covers most of [0, 1]
    assert (y[chosen] < 1e-3).any() and (y[chosen] > 1 - 1e-3).any()   # clipped to black and to white
    again, _, _ = random_intensity_windows(x, np.random.default_rng(1), 0.5)
    assert torch.equal(y, again)                         # a pure function of the generator (exact resumes)
    assert torch.equal(random_intensity_windows(x, np.random.default_rng(1), 0.0)[0], x)
    with pytest.raises(DataError, match="share"):
        random_intensity_windows(x, np.random.default_rng(1), 1.5)


def test_undo_intensity_windows_gives_task_networks_the_original_back():
    import numpy as np

    from fedcodec.training_data import random_intensity_windows, undo_intensity_windows

    x = 0.3 + 0.5 * torch.rand(32, 1, 16, 16)
    y, chosen, windows = random_intensity_windows(x, np.random.default_rng(2), 0.5)
    back = undo_intensity_windows(y, windows)
    lo, hi = (windows[:, i].float()[:, None, None, None] for i in (0, 1))
    unclipped = (x > lo + 0.01) & (x < hi - 0.01)
    assert (back - x)[unclipped].abs().max() < 5e-3          # inside the window: the original (the base clamp)
    assert torch.allclose(back[x <= lo], lo.expand_as(x)[x <= lo], atol=5e-3)   # clipped stays at the edge
    assert torch.equal(back[~chosen], y[~chosen])            # the others untouched, even outside [0, 1]
    y.requires_grad_(True)
    undo_intensity_windows(y, windows).sum().backward()
    assert torch.isfinite(y.grad).all()
    with pytest.raises(DataError, match="windows"):
        undo_intensity_windows(y, windows[:3])


def test_tiny_pretrain_writes_loadable_outputs(tmp_path, tiny_task_path):
    from fedcodec.pretrain import PretrainConfig, Stage, pretrain

    config = PretrainConfig(steps=4, batch_size=2, crop=64, images=3, image_size=128, N=16, M=16, num_qualities=3,
                            stages=[Stage("rd", 0.5, 1e-3, 0.0, 1e-3), Stage("semantic", 0.5, 1e-4, 1.0, 1e-3)],
                            log_every=2)
    codec, _, summary = pretrain(config, tmp_path / "pt", task_net=load_task(tiny_task_path))
    for name in ("codec.pt", "task.pt", "pretrain.json", "metrics.csv"):
        assert (tmp_path / "pt" / name).is_file()
    assert load_codec(tmp_path / "pt" / "codec.pt").identity_hash() == codec.identity_hash()
    assert json.loads((tmp_path / "pt" / "pretrain.json").read_text())["config"]["steps"] == 4
    assert summary["parameter_counts"]["total"] == sum(p.numel() for p in codec.parameters())
    with pytest.raises(Exception, match="exists"):
        pretrain(config, tmp_path / "pt", task_net=load_task(tiny_task_path))


def test_fine_tune_from_a_codec_file_adds_neutral_hyper_latent_gains(tmp_path, tiny_codec_path, tiny_task_path):
    from fedcodec.pretrain import PretrainConfig, fine_tune_stages, initial_codec, pretrain

    start = load_codec(tiny_codec_path)
    config = PretrainConfig(steps=3, batch_size=2, crop=64, images=3, image_size=128, init=str(tiny_codec_path),
                            z_gain=True, stages=fine_tune_stages(), log_every=1)
    fresh = initial_codec(config)
    assert fresh.config == {**start.config, "z_gain": True} and torch.all(fresh.log_z_gain == 0)
    for key, value in start.state_dict().items():           # everything else starts from the file
        assert torch.equal(fresh.state_dict()[key], value), key
    codec, _, summary = pretrain(config, tmp_path / "ft", task_net=load_task(tiny_task_path))
    tuned = load_codec(tmp_path / "ft" / "codec.pt")
    assert tuned.config["z_gain"] is True and tuned.identity_hash() == codec.identity_hash()
    assert not torch.all(tuned.log_z_gain == 0)             # the gains train (at gain_lr_scale x the rate)
    assert summary["config"]["init"] == str(tiny_codec_path) and summary["config"]["stages"][0]["lr"] == 1e-4


def test_task_network_files(tmp_path):
    from fedcodec.model_io import save_task

    net = freeze(build_task_network(TINY_TASK_FEATURES))
    path = save_task(net, tmp_path / "t.pt")
    loaded = load_task_network(path)
    x = torch.rand(1, 1, 64, 64)
    assert torch.allclose(loaded(x), net(x), atol=1e-5)
    (tmp_path / "bad.pt").write_text("not torchscript")
    with pytest.raises(ModelFileError, match="not a task network"):
        load_task_network(tmp_path / "bad.pt")
    scripted = torch.jit.trace(torch.nn.Flatten(), torch.rand(1, 1, 64, 64))
    torch.jit.save(scripted, str(tmp_path / "flat.pt"))
    with pytest.raises(ModelFileError, match="logits"):
        load_task_network(tmp_path / "flat.pt")


def test_pretrain_resume_continues_exactly(tmp_path):
    """A run stopped after its first step and resumed gives the same losses, validation and weights as an
    uninterrupted run (model, optimisers, scheduler, step and RNG states all travel in checkpoint.pt)."""
    import csv

    from fedcodec.pretrain import lean_config, pretrain

    kw = dict(steps=6, images=4, image_size=128, crop=64, batch_size=2, N=16, M=16, Nz=4,
              decoder_widths=[16, 16, 8], task_ensemble=[["unet", [4, 8, 8], 1], ["basicunet", [4, 4, 8, 8, 8, 4], 2]],
              task_steps=2, warmup_steps=2, val_every=3, val_images=1, log_every=1, checkpoint_every=2,
              intensity_windows=0.5, intensity_windows_quality=4, window_task=True, hyper_rate_weight=2.0)
    full, _, s_full = pretrain(lean_config(**kw), tmp_path / "full", progress=False)
    _, _, s_half = pretrain(lean_config(**kw), tmp_path / "chunks", progress=False, max_minutes=1e-9)
    assert not s_half["finished"] and s_half["step"] == 1 and (tmp_path / "chunks" / "checkpoint.pt").is_file()
    with pytest.raises(Exception, match="--resume"):
        pretrain(lean_config(**kw), tmp_path / "chunks", progress=False)  # no silent restart over a checkpoint
    resumed, _, s_res = pretrain(None, tmp_path / "chunks", resume=True, progress=False)
    assert s_res["finished"] and s_full["finished"]
    rows = [list(csv.DictReader(open(tmp_path / d / "metrics.csv"))) for d in ("full", "chunks")]
    assert len(rows[0]) == 6 and rows[0][2]["val_score"] != ""
    for a, b in zip(*rows):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("arch,features", [("basicunet", (4, 8, 8, 16, 16, 4)), ("unet", (4, 8, 16))])
def test_task_network_files_are_config_plus_weights(tmp_path, arch, features):
    """fedcodec's own segmenters travel as MONAI config + weights (safetensors, no code runs on load);
    TorchScript files (a site's own network, files written before) still load; foreign files are refused."""
    from safetensors.torch import save_file

    from fedcodec.task_net import save_task_network

    net = freeze(build_task_network(features, arch=arch))
    save_task_network(net, tmp_path / "t.pt")
    assert (tmp_path / "t.pt").read_bytes()[8:9] == b"{"
    again = load_task_network(tmp_path / "t.pt")
    x = torch.rand(2, 1, 64, 96)
    assert type(again) is type(net) and torch.equal(again(x), net(x))
    torch.jit.save(torch.jit.trace(net, torch.rand(1, 1, 64, 64), check_trace=False), tmp_path / "ts.pt")
    assert torch.allclose(load_task_network(tmp_path / "ts.pt")(x), net(x), atol=1e-5)
    save_file({"w": torch.zeros(2)}, tmp_path / "foreign.pt", metadata={"format": "something-else"})
    with pytest.raises(ModelFileError, match="not a fedcodec task network"):
        load_task_network(tmp_path / "foreign.pt")


def test_equal_rate_task_ratio_tells_a_better_curve_from_a_move_along_it():
    from fedcodec.adapt import equal_rate_task_ratio

    base = [(0.01, 0.9), (0.02, 0.6), (0.04, 0.4), (0.08, 0.3)]
    assert equal_rate_task_ratio(base, base) == pytest.approx(1.0)
    # every quality moved along the same curve (fewer bits, worse reading): no better, no worse
    assert equal_rate_task_ratio(base, [(0.01, 0.9), (0.02, 0.6), (0.04, 0.4)]) == pytest.approx(1.0)
    assert equal_rate_task_ratio(base, [(b, 0.8 * t) for b, t in base]) == pytest.approx(0.8)
    # more bits for a slightly better reading at each quality: worse at equal rate
    assert equal_rate_task_ratio(base, [(1.5 * b, 0.95 * t) for b, t in base]) > 1.0
    assert equal_rate_task_ratio(base, [(b / 2, t) for b, t in base]) < 1.0        # the same reading, half the bits
    assert equal_rate_task_ratio(base, [(1.0, 0.1), (2.0, 0.05)]) == float("inf")   # no common rate
    assert equal_rate_task_ratio([(0.02, 0.6)], [(0.01, 0.3)]) == pytest.approx(0.5)  # one quality: its task loss


def test_adapt_selection_checks_the_task_loss_at_equal_rate(task_net, shots):
    """The held-out selection measures the rate-task curve at every check and keeps a step count only where
    the adapted curve is no worse at equal rate; choose_steps refuses a check whose ratio is above 1 however
    much its objective improved."""
    from fedcodec.adapt import choose_steps

    codec = make_tiny_codec(0)
    result = adapt(codec, task_net, shots[:1], AdaptConfig(steps=20, lr=5e-2, check_every=5, prox_mu=0.0))
    assert "task loss at equal rate (ratio) 1.0000 ->" in result.reason
    if result.metrics["kept"]:
        assert 0.0 < result.metrics["equal_rate_task_ratio"] <= 1.0
    names = ("top-quality task loss", "task loss at equal rate (ratio)")
    assert choose_steps((1.0, 0.5, 1.0), [(10, 0.6, 0.5, 1.03)], 0.005, 0.0, names)[0] == 0
    assert choose_steps((1.0, 0.5, 1.0), [(10, 0.6, 0.5, 0.97)], 0.005, 0.0, names)[0] == 10


def test_choose_steps_keeps_only_what_beats_the_start_without_costing_the_top_quality():
    from fedcodec.adapt import choose_steps

    base = (1.0, 0.50)
    # the lowest objective raised the top-quality task loss 0.50 -> 0.60: the next best check is kept
    step, why = choose_steps(base, [(10, 0.95, 0.49), (20, 0.80, 0.60), (30, 0.90, 0.505)], 0.005, 0.02)
    assert step == 30 and "0.9000" in why
    # every improvement costs the top quality: keep the pretrained subset, and say why
    step, why = choose_steps(base, [(10, 0.80, 0.60)], 0.005, 0.02)
    assert step == 0 and "raised top-quality task loss 0.5000 -> 0.6000" in why
    # nothing beats the start by min_gain
    step, why = choose_steps(base, [(10, 0.998, 0.40)], 0.005, 0.02)
    assert step == 0 and "no step count beat" in why
    assert choose_steps(base, [], 0.005, 0.02)[0] == 0
    # a second guard vetoes what the first alone would keep
    step, why = choose_steps((1.0, 0.5, 0.2), [(10, 0.8, 0.45, 0.3), (20, 0.9, 0.5, 0.2)], 0.005, 0.02,
                             ("top", "consistency"))
    assert step == 20 and "consistency 0.2000 -> 0.2000" in why


def test_crossfold_selection_averages_the_two_folds_relative_to_their_starts(task_net, shots):
    from fedcodec.adapt import combine_folds

    # fold 1 improves 10 % at step 10, fold 2 worsens 20 %: on average worse, so step 10 is not a gain
    folds = [((2.0, 0.5, 1.0), [(10, 1.8, 0.5, 0.9), (20, 1.9, 0.45, 1.0)]),
             ((4.0, 0.2, 1.0), [(10, 4.8, 0.2, 1.1), (20, 3.6, 0.2, 0.9)])]
    base, checks = combine_folds(folds)
    assert base == (1.0, 1.0, 1.0)
    assert checks[0] == pytest.approx((10, 1.05, 1.0, 1.0))
    assert checks[1] == pytest.approx((20, 0.925, 0.95, 0.95))
    assert combine_folds(folds[:1]) == ((2.0, 0.5, 1.0), [(10, 1.8, 0.5, 0.9), (20, 1.9, 0.45, 1.0)])
    # steps only one fold checked are dropped (both folds run the same schedule, so none in practice)
    assert [c[0] for c in combine_folds([folds[0], (folds[1][0], folds[1][1][:1])])[1]] == [10]
    with pytest.raises(ValueError, match="unknown adaptation selection"):
        adapt(make_tiny_codec(0), task_net, shots[:1], AdaptConfig(steps=2, select="twofold"))
    for select in ("none", "crossfold"):   # an unknown split is refused even where no fold would use it
        with pytest.raises(ValueError, match="unknown held-out split"):
            adapt(make_tiny_codec(0), task_net, shots[:1], AdaptConfig(steps=2, select=select, split="diagonal"))


@pytest.mark.parametrize("select, folds", [("crossfold", 2), ("fourfold", 4)])
def test_the_selection_judges_on_its_folds_and_leaves_a_refused_codec_as_it_was(task_net, shots, select, folds):
    codec = make_tiny_codec(0)
    before = {k: v.clone() for k, v in codec.state_dict().items()}
    result = adapt(codec, task_net, shots[:1], AdaptConfig(steps=10, lr=1e-2, check_every=5, select=select,
                                                           candidates=()))
    assert result.reason.startswith(f"{folds} folds")
    changed = any(not torch.equal(before[k], v) for k, v in codec.state_dict().items())
    assert changed == bool(result.metrics["kept"])   # refused: exactly as it was; kept: trained on the whole shot


def test_holdout_folds_cut_the_shots_into_disjoint_halves_along_one_or_both_sides():
    from fedcodec.adapt import holdout_folds

    # pixel values = their position, so every fold's pieces can be traced back to where they came from
    images = torch.arange(2 * 128 * 256, dtype=torch.float32).reshape(2, 1, 128, 256)
    masks = (images.long() % 2).to(torch.uint8)
    assert len(holdout_folds(images, masks, "holdout")) == 1
    cross = holdout_folds(images, masks, "crossfold")
    assert len(cross) == 2
    tr_x, tr_m, va_x, va_m = cross[0]
    assert tr_x.shape == va_x.shape == (2, 1, 128, 128)            # cut along the longer side (width)
    assert torch.equal(torch.cat([tr_x, va_x], -1), images) and torch.equal(torch.cat([tr_m, va_m], -1), masks)
    assert torch.equal(cross[1][0], va_x) and torch.equal(cross[1][2], tr_x)   # the second fold swaps roles
    four = holdout_folds(images, masks, "fourfold")
    assert len(four) == 4 and all(torch.equal(a[0], b[0]) for a, b in zip(four[:2], cross))
    top, bottom = four[2][0], four[2][2]
    assert top.shape == bottom.shape == (2, 1, 64, 256) and torch.equal(torch.cat([top, bottom], -2), images)
    assert torch.equal(four[3][0], bottom) and torch.equal(four[3][2], top)
    # the cut can be chosen: top/bottom on this wide shot, and back to the longer side where that side is too small
    tb = holdout_folds(images, masks, "crossfold", split="top-bottom")
    assert torch.equal(tb[0][0], top) and torch.equal(tb[0][2], bottom) and len(tb) == 2
    short = holdout_folds(images[..., :64, :], masks[..., :64, :], "holdout", split="top-bottom")
    assert short[0][0].shape == (2, 1, 64, 128)
    with pytest.raises(ValueError, match="unknown held-out split"):
        holdout_folds(images, masks, "crossfold", split="diagonal")
    # the shorter side too small to halve (< 2 blocks): fourfold is crossfold; nothing to halve: no folds
    assert len(holdout_folds(images[..., :64, :], masks[..., :64, :], "fourfold")) == 2
    assert holdout_folds(images[..., :64, :64], masks[..., :64, :64], "crossfold") == []


def test_pick_candidate_keeps_the_lowest_task_loss_at_equal_rate_among_the_kept():
    from fedcodec.adapt import CandidateOutcome as C
    from fedcodec.adapt import pick_candidate

    both, policy = ("policy", "adapters"), ("policy",)
    base = (1.0, 1.0, 1.0)
    # both lowered the objective more (0.95 against 0.99) but policy is better at equal rate (0.83 against 0.91)
    a = C(both, base, [], 30, (30, 0.95, 0.93, 0.91), "a")
    b = C(policy, base, [], 50, (50, 0.99, 0.99, 0.83), "b")
    assert pick_candidate([a, b]).groups == policy
    assert pick_candidate([a, C(policy, base, [], 0, None, "refused")]).groups == both   # only kept ones compete
    none = [C(both, base, [], 0, None, "x"), C(policy, base, [], 0, None, "y")]
    assert pick_candidate(none).steps == 0 and pick_candidate(none).groups == both
    assert pick_candidate([a, C(policy, base, [], 10, (10, 0.9, 0.9, 0.91), "tie")]).groups == both   # first on a tie


def test_adapt_compares_candidate_group_sets_and_trains_only_the_chosen_one(task_net, shots):
    assert AdaptConfig().candidates == (("policy", "adapters"), ("policy",))
    codec = make_tiny_codec(0)
    before = {k: v.clone() for k, v in codec.state_dict().items()}
    config = AdaptConfig(steps=10, lr=3e-2, check_every=5, prox_mu=0.0)   # the default candidates
    result = adapt(codec, task_net, shots[:1], config)
    assert result.reason.startswith("policy+adapters: 2 folds") and "; policy: 2 folds" in result.reason
    assert set(result.state) == set(codec.group_state_dict(config.groups))   # the whole subset travels
    changed = {group_of(k) for k in before if not torch.equal(before[k], codec.state_dict()[k])
               and not k.endswith(("_quantized_cdf", "_offset", "_cdf_length"))}
    if result.metrics["kept"]:
        assert result.trained in config.candidates and changed == set(result.trained)
        assert f"kept {'+'.join(result.trained)}" in result.reason
    else:
        assert result.trained == () and not changed and result.reason.endswith("the pretrained subset stays")
    with pytest.raises(ValueError, match="not a non-empty set of the groups"):
        adapt(make_tiny_codec(0), task_net, shots[:1], AdaptConfig(steps=2, candidates=(("policy", "base"),)))
    # candidates outside the configured groups are skipped: groups=("policy",) trains the policy head alone
    alone = adapt(make_tiny_codec(0), task_net, shots[:1], AdaptConfig(steps=4, check_every=2, groups=("policy",)))
    assert alone.reason.startswith("2 folds") and alone.trained in ((), ("policy",))


def test_adapt_that_cannot_help_leaves_the_codec_exactly_as_it_was(task_net, shots):
    codec = make_tiny_codec(0)
    before = {k: v.clone() for k, v in codec.state_dict().items()}
    result = adapt(codec, task_net, shots[:1], AdaptConfig(steps=10, lr=0.0, check_every=5))
    assert result.metrics["kept"] == 0.0 and result.metrics["selected_steps"] == 0.0
    assert "keeping the pretrained subset" in result.reason
    assert all(torch.equal(before[k], v) for k, v in codec.state_dict().items())


def test_adapt_checks_unannotated_scans_against_what_the_task_network_reads_in_the_originals(task_net, shots):
    from fedcodec.adapt import consistency_targets, heldout_loss, resolved

    codec = make_tiny_codec(0)
    scans = make_phantoms(3, seed=99, size=128, hospital=2)
    images = samples_to_tensors(scans)[0]
    targets = consistency_targets(task_net, images)
    assert targets.shape == images.shape and targets.dtype == torch.uint8
    # a decoded image at the top quality reads closer to the original than at the lowest one
    _, top_task, curve = heldout_loss(codec, task_net, images, targets, resolved(AdaptConfig(qualities=(0, 3)), codec))
    assert top_task == curve[-1][1] <= curve[0][1] + 1e-6 and curve[-1][0] > curve[0][0]
    unannotated = [type(s)(s.image, None, s.name, s.bit_depth, s.window) for s in scans]
    config = AdaptConfig(steps=20, lr=5e-2, check_every=5, prox_mu=0.0)
    result = adapt(codec, task_net, shots[:1], config, unlabeled=unannotated)
    assert 0.0 <= result.metrics["archive_top_dice_start"] <= 1.0
    if result.metrics["kept"]:   # what was kept passed the check on the scans
        assert "passed on 3 unannotated scans" in result.reason
        m = result.metrics
        assert m["archive_bd_rate_limit"] >= config.archive_bd_rate and m["archive_bd_rate"] <= m["archive_bd_rate_limit"]
        assert m["archive_top_dice"] >= m["archive_top_dice_start"] - m["archive_top_dice_limit"]


def test_archive_check_passes_the_starting_codec_and_refuses_a_damaged_one(task_net):
    from fedcodec.adapt import ArchiveCheck, resolved

    codec = make_tiny_codec(0)
    scans = samples_to_tensors(make_phantoms(3, seed=99, size=128, hospital=2))[0]
    check = ArchiveCheck(codec, task_net, scans, resolved(AdaptConfig(), codec), torch.device("cpu"))
    passed, why = check.judge(codec)
    assert passed and "against the starting codec +0.0 %" in why
    assert [q for q, _ in enumerate(check.start)] == list(range(codec.num_qualities))
    assert check.start[0][0] < check.start[-1][0]   # bpp rises with the quality
    with torch.no_grad():   # adapters that scramble the latents: the network reads the scans worse at every rate
        for name, p in codec.named_parameters():
            if name.startswith("adapters"):
                p.add_(torch.randn_like(p) * 0.5)
    passed, why = check.judge(codec)
    assert not passed and why.startswith("refused on 3 unannotated scans")
    m = check.metrics()
    assert m["archive_bd_rate"] > 1.0 or m["archive_top_dice"] < m["archive_top_dice_start"] - 0.005


def test_archive_limits_widen_only_as_far_as_the_shots_annotation_calls_the_move_right(task_net):
    from fedcodec.adapt import ArchiveCheck, resolved

    codec = make_tiny_codec(0)
    scans = samples_to_tensors(make_phantoms(3, seed=99, size=128, hospital=2))[0]
    shots = samples_to_tensors(make_phantoms(1, seed=7, size=128, hospital=2))
    config = resolved(AdaptConfig(archive_relative_to_shots=True), codec)
    check = ArchiveCheck(codec, task_net, scans, config, torch.device("cpu"), shots=shots)
    base = (config.archive_bd_rate, config.archive_top_dice)
    # the starting codec: the shot's reading has not moved, no allowance, and it passes
    assert check.allowance(codec)[:2] == base and check.judge(codec)[0]
    # a codec that wrecks the latents reads the shot further from its annotation too: no allowance, refused
    damaged = make_tiny_codec(0)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in damaged.named_parameters():
            if name.startswith("adapters"):
                p.add_(torch.randn_like(p) * 0.5)
    bd_limit, top_limit, why = check.allowance(damaged)
    assert (bd_limit, top_limit) == base and "no allowance" in why
    passed, why = check.judge(damaged)
    assert not passed and "no allowance" in why
    # the rule on given readings (bpp, Dice against the original's reading, Dice against the annotation) per
    # quality: moved away from the original's reading (-0.02 at the top) and towards the annotation (+0.03)
    check.shots_start = [(0.1, 0.90, 0.80), (0.2, 0.95, 0.85), (0.4, 0.99, 0.90)]
    right = [(0.1, 0.88, 0.83), (0.2, 0.93, 0.88), (0.4, 0.97, 0.93)]
    wrong = [(0.1, 0.88, 0.77), (0.2, 0.93, 0.82), (0.4, 0.97, 0.87)]
    check._points = lambda codec, *targets: right
    bd_limit, top_limit, why = check.allowance(codec)
    assert bd_limit > base[0] and top_limit == pytest.approx(base[1] + 0.02) and "towards their annotation" in why
    check._points = lambda codec, *targets: wrong
    assert check.allowance(codec)[:2] == base
    # without relative limits (the default) the shots are ignored
    plain = ArchiveCheck(codec, task_net, scans, resolved(AdaptConfig(), codec), torch.device("cpu"), shots=shots)
    assert plain.shots is None and plain.allowance(damaged)[:2] == base


def test_adapt_tries_the_next_candidate_when_the_archive_refuses_one_and_else_keeps_the_start(task_net, shots,
                                                                                              monkeypatch):
    from fedcodec import adapt as adapt_module

    scans = samples_to_tensors(make_phantoms(2, seed=99, size=128, hospital=2))[0]
    # every candidate passes its selection: a negative gain, guards that allow anything
    config = AdaptConfig(steps=20, lr=5e-2, check_every=5, prox_mu=0.0, min_gain=-1.0, task_tolerance=100.0)
    judged = []

    def verdicts(answers):
        def judge(self, codec):
            judged.append(answers[len(judged)])
            return judged[-1], "passed" if judged[-1] else "refused"
        return judge

    # the archive refuses the first candidate's refit: the second is refit and kept
    monkeypatch.setattr(adapt_module.ArchiveCheck, "judge", verdicts([False, True]))
    result = adapt(make_tiny_codec(0), task_net, shots[:1], config, unlabeled=scans)
    assert judged == [False, True] and result.metrics["kept"] == 1.0 and len(result.trained) > 0
    assert "refused" in result.reason and "passed" in result.reason
    # it refuses both: the codec is exactly the one that came in
    judged.clear()
    monkeypatch.setattr(adapt_module.ArchiveCheck, "judge", verdicts([False, False]))
    codec = make_tiny_codec(0)
    before = {k: v.clone() for k, v in codec.state_dict().items()}
    result = adapt(codec, task_net, shots[:1], config, unlabeled=scans)
    assert judged == [False, False] and result.metrics["kept"] == 0.0 and result.trained == ()
    assert "no candidate helped" in result.reason
    assert all(torch.equal(before[k], v) for k, v in codec.state_dict().items())
