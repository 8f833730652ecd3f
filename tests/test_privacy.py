"""Privacy: what leaves a hospital, client-level central DP (clipping, accounting, budget) and sample-level
DP-SGD composed across rounds. The real apps run through the in-process Grid."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest_flower import run_config, tiny_assets, write_site_folder  # noqa: F401
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord

from clients.client_app import DP_STATE_KEY
from fedcodec.model_io import load_codec
from server.federation import load_checkpoint
from simulations.inprocess import run_inprocess
from strategies.validation import update_norm

TRAIN_METRICS = {"num-examples", "examples", "loss", "bpp", "task", "dice", "epsilon", "seconds"}
EVAL_METRIC = re.compile(r"^(num-examples|bpp|dice|psnr|dice-uncompressed|bpp-q\d+|dice-q\d+)$")
CLIP = 0.05


@pytest.fixture(scope="module")
def dp_run(tiny_assets, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("dp")
    sites = [write_site_folder(root / f"hospital-{h}-secret", hospital=h, n=3) for h in (1, 2, 3)]
    rc = run_config(tiny_assets, root / "out", {
        "num-server-rounds": 2, "shots": 2,
        "central-dp.enabled": True, "central-dp.noise-multiplier": 0.8, "central-dp.clipping-norm": CLIP,
        "central-dp.max-epsilon": 0.0,
        "sample-dp.enabled": True, "sample-dp.noise-multiplier": 1.0, "sample-dp.max-grad-norm": 1.0})
    summary, grid = run_inprocess(rc, 3, [{"data-dir": str(s)} for s in sites])
    return {"summary": summary, "grid": grid, "out": root / "out", "sites": sites, "rc": rc}


def test_replies_carry_only_the_subset_and_scalar_metrics(dp_run, tiny_assets):  # noqa: F811
    grid = dp_run["grid"]
    subset = load_codec(tiny_assets["codec"]).group_state_dict()
    shapes = {k: tuple(v.shape) for k, v in subset.items()}
    secrets = [str(s) for s in dp_run["sites"]] + ["hospital-", "secret", "h1_0000", "h2_0001", "h3_0002", ".png"]
    assert grid.received and not any(m.has_error() for m in grid.received)
    for sent, reply in zip(grid.sent, grid.received):
        content = reply.content
        kinds = {name: type(rec) for name, rec in content.items()}
        if sent.metadata.message_type == "train":
            assert kinds == {"arrays": ArrayRecord, "metrics": MetricRecord}
            arrays = content["arrays"]
            assert list(arrays.keys()) == list(subset)                 # exactly the subset, in order
            assert {k: tuple(a.shape) for k, a in arrays.items()} == shapes
            assert all(a.dtype == "float32" for a in arrays.values())
            assert set(content["metrics"].keys()) <= TRAIN_METRICS
        else:
            assert kinds == {"metrics": MetricRecord}
            assert all(EVAL_METRIC.match(k) for k in content["metrics"].keys())
        for rec in content.metric_records.values():
            assert all(type(v) in (int, float) for v in rec.values())  # scalars only: no per-sample lists
        assert not content.config_records                              # no strings, no bytes
        # Nothing identifying: no file names, folder names or paths, in keys or in serialized payloads.
        blob = b"".join([k.encode() for k in content.keys()]
                        + [k.encode() + a.data for r in content.array_records.values() for k, a in r.items()]
                        + [repr(dict(r)).encode() for r in content.metric_records.values()])
        for s in secrets:
            assert s.encode() not in blob, s


def test_server_messages_carry_only_the_subset_and_config(dp_run, tiny_assets):  # noqa: F811
    subset = load_codec(tiny_assets["codec"]).group_state_dict()
    for m in dp_run["grid"].sent:
        kinds = {name: type(rec) for name, rec in m.content.items()}
        assert kinds == {"arrays": ArrayRecord, "config": ConfigRecord}
        assert list(m.content["arrays"].keys()) == list(subset)
        assert set(m.content["config"].keys()) <= {"base-hash", "groups", "equal-weights", "server-round",
                                                   "clipping_norm", "proximal-mu", "sample-dp.prior-rounds"}


def test_updates_are_clipped_at_the_client(dp_run):
    grid = dp_run["grid"]
    for sent, reply in zip(grid.sent, grid.received):
        if sent.metadata.message_type != "train":
            continue
        a = {k: v.numpy() for k, v in reply.content["arrays"].items()}
        b = {k: v.numpy() for k, v in sent.content["arrays"].items()}
        assert update_norm(a, b) <= CLIP * (1 + 1e-4)
        assert reply.content["metrics"]["num-examples"] == 1.0   # equal weights for the accountant
        assert reply.content["metrics"]["examples"] == 2.0


def test_epsilon_grows_across_rounds(dp_run):
    rows = json.loads((dp_run["out"] / "metrics.json").read_text())["rounds"]
    central = [r["epsilon_central"] for r in rows if r["round"] > 0]
    sample = [r["epsilon_sample"] for r in rows if r["round"] > 0]
    assert len(central) == 2 and 0 < central[0] < central[1]
    assert len(sample) == 2 and 0 < sample[0] < sample[1]      # Opacus history composed via context.state
    for ctx in dp_run["grid"].contexts.values():
        history = json.loads(str(ctx.state[DP_STATE_KEY]["history"]))
        assert sum(int(h[2]) for h in history) == 2 * 2          # 2 rounds x 2 local steps, all accounted
    s = dp_run["summary"]
    assert s["epsilon_central"]["releases"] == 2 and s["epsilon_central"]["epsilon"] == pytest.approx(central[-1])
    # The accountant is in the checkpoint, so a resumed run keeps the cumulative epsilon.
    acc = json.loads(load_checkpoint(dp_run["out"])["strategy"]["accountant"])
    assert len(acc["compositions"]) >= 1 and sum(c["count"] for c in acc["compositions"]) == 2


def test_the_budget_stops_the_federation(tiny_assets, tmp_path):  # noqa: F811
    from flwr.serverapp import NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod
    from flwr.serverapp import GaussianPrivacyEvent

    acc = RdpAccountant(PrivacyConfig(1e-3, 3, NeighboringRelation.ADD_OR_REMOVE_ONE,
                                      SamplingMethod.NO_AMPLIFICATION))
    eps = []
    for _ in range(2):
        acc.compose(GaussianPrivacyEvent(noise_multiplier=2.0, sample_size=3, population_size=3))
        eps.append(acc.get_privacy_spent().epsilon)
    rc = run_config(tiny_assets, tmp_path / "out", {
        "num-server-rounds": 4, "evaluate-before": False, "central-dp.enabled": True,
        "central-dp.noise-multiplier": 2.0, "central-dp.clipping-norm": 0.1,
        "central-dp.max-epsilon": float(np.mean(eps))})
    summary, _ = run_inprocess(rc, 3)
    assert summary["rounds_completed"] == 1
    assert "privacy budget" in summary["stop_reason"]
    assert summary["epsilon_central"]["epsilon"] == pytest.approx(eps[0])
    assert (tmp_path / "out" / "adapted_codec.pt").is_file()


def test_error_replies_name_no_local_files(tiny_assets, tmp_path):  # noqa: F811
    good = write_site_folder(tmp_path / "hospital-ok", hospital=1, n=2)
    unannotated = write_site_folder(tmp_path / "hospital-7-private", hospital=2, n=2)
    for mask in (unannotated / "masks").iterdir():   # a site whose images lack masks: a DataError naming files
        mask.unlink()
    node_configs = [{"data-dir": str(good)}, {"data-dir": str(unannotated)},
                    {"data-dir": str(tmp_path / "missing-folder-of-hospital-9")}]
    rc = run_config(tiny_assets, tmp_path / "out", {"num-server-rounds": 1})
    summary, grid = run_inprocess(rc, 3, node_configs)
    errors = [m.error.reason for m in grid.received if m.has_error()]
    assert len(errors) == 6 and all(e.startswith("DataError at the site") for e in errors)
    for e in errors:
        assert "hospital-7" not in e and "missing-folder" not in e and str(tmp_path) not in e and "h2_" not in e
    assert summary["rounds_completed"] == 1


def test_central_dp_noise_scale_matches_the_noise_flower_adds(dp_run):
    """The planning figure the server prints (noise std sigma*C/n per coordinate) is the noise Flower really adds:
    round 2's broadcast subset minus the mean of round 1's (clipped, equally weighted) replies."""
    run = json.loads((dp_run["out"] / "run.json").read_text())
    scale = run["central_dp_noise"]
    n = run["hospitals_per_round"]
    assert n == 3 and scale["noise_std_per_coordinate"] == pytest.approx(0.8 * CLIP / n)
    assert scale["noise_to_update_ratio"] == pytest.approx(0.8 * np.sqrt(run["subset_parameters"]) / n)
    grid = dp_run["grid"]
    train = [(s, r) for s, r in zip(grid.sent, grid.received) if s.metadata.message_type == "train"]
    assert len(train) == 2 * n                      # the grid records messages in order: round 1, then round 2
    r1, r2 = train[:n], train[n:]
    flat = lambda rec: np.concatenate([a.numpy().ravel() for a in rec.values()])  # noqa: E731
    mean_reply = np.mean([flat(reply.content["arrays"]) for _, reply in r1], axis=0)
    broadcast = flat(r2[0][0].content["arrays"])
    noise = broadcast - mean_reply
    assert noise.size == run["subset_parameters"] > 500
    assert abs(noise.mean()) < 4 * scale["noise_std_per_coordinate"] / np.sqrt(noise.size)
    assert noise.std() == pytest.approx(scale["noise_std_per_coordinate"], rel=0.1)
