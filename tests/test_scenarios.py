"""Scenario files (simulations/scenario.py): the built-in files, one clear error per invalid file, the simulation
helpers a scenario switches on (shifts, shot distributions, attacks, stragglers, bounded site data), and device
selection with its CPU fallback. The Ray runs are in tests/test_simulation_ray.py."""

from __future__ import annotations

import json

import pytest
import torch

from clients import site
from fedcodec import run_config as C
from simulations.run import main as run_main
from simulations.scenario import (
    RANDOM_SHIFT_BASE,
    SCENARIO_DIR,
    ScenarioError,
    builtin_names,
    builtin_scenarios,
    load_scenario,
    parse_scenario,
)

# ------------------------------------------------------------------------------------------- built-in files


def test_builtin_scenarios_are_files_and_load():
    names = builtin_names()
    for required in ("default", "many-hospitals", "shots-4", "fedprox", "fedadam", "central-dp", "sample-dp",
                     "dp-off", "dropouts", "attack-validation", "attack-median", "scale-1000"):
        assert required in names and (SCENARIO_DIR / f"{required}.toml").is_file()
    scenarios = builtin_scenarios()
    for name, s in scenarios.items():
        assert s.name == name and s.description
        assert set(s.run_config) <= set(C.DEFAULTS), name     # only real run-config keys
        assert s.run_config["min-available-hospitals"] == s.supernodes


def test_default_scenario_is_the_main_job():
    s = load_scenario("default")
    assert s.supernodes == 4
    rc = s.run_config
    assert rc["min-train-hospitals"] == 4 and rc["fraction-train"] == 1.0 and rc["shots"] == 1
    # partition p plays phantom hospital p + 1, as before the files existed
    assert [site.sim_hospital({"partition-id": p}, rc) for p in range(4)] == [1, 2, 3, 4]


def test_scale_1000_samples_20_of_1000():
    s = load_scenario("scale-1000")
    rc = s.run_config
    assert s.supernodes == 1000 and rc["num-server-rounds"] == 3 and rc["shots"] == 1
    assert rc["min-train-hospitals"] == 20 and int(1000 * rc["fraction-train"]) == 20
    # every hospital has its own seeded random shift (ids > 5), generated from its partition id
    ids = {site.sim_hospital({"partition-id": p}, rc) for p in range(1000)}
    assert len(ids) == 1000 and min(ids) >= RANDOM_SHIFT_BASE


def test_scenario_maps_fields_to_run_config():
    s = parse_scenario("""
        [federation]
        hospitals = 10
        train-per-round = 5
        evaluate-per-round = 2
        rounds = 7
        [data]
        shots = [1, 2, 8]
        shift = "random"
        shift-seed = 3
        [training]
        groups = ["policy"]
        [strategy]
        name = "fedprox"
        proximal-mu = 0.5
        [privacy.central]
        enabled = false
        noise-multiplier = 0.7
        [faults]
        dropout = 0.2
        stragglers = 0.1
        malicious = 0.2
        attack = "stale"
        [resources]
        num-cpus = 2
        num-gpus = 0.5
        device = "cpu"
        [run-config]
        lr = 0.01
    """, source="t.toml")
    rc = s.run_config
    assert s.name == "t" and s.supernodes == 10 and s.num_cpus == 2
    assert rc["num-server-rounds"] == 7 and rc["min-train-hospitals"] == 5 and rc["fraction-train"] == 0.5
    assert rc["min-evaluate-hospitals"] == 2 and rc["fraction-evaluate"] == 0.2
    assert rc["shots"] == 8 and rc["sim.shots"] == "1,2,8" and rc["groups"] == "policy"
    assert rc["strategy"] == "fedprox" and rc["proximal-mu"] == 0.5 and rc["central-dp.enabled"] is False
    assert rc["central-dp.noise-multiplier"] == 0.7
    assert rc["sim.dropout"] == 0.2 and rc["sim.straggler"] == 0.1 and rc["sim.attack"] == "stale"
    assert len(rc["sim.attack-partitions"].split(",")) == 2 and rc["device"] == "cpu" and rc["lr"] == 0.01
    assert rc["sim.hospital-offset"] == RANDOM_SHIFT_BASE + 3 * 10_000_000
    assert s.federation_config(gpu_available=True) == \
        "num-supernodes=10 client-resources-num-cpus=2 client-resources-num-gpus=0.5"
    # no GPU: every virtual hospital gets the CPU only
    assert s.federation_config(gpu_available=False).endswith("client-resources-num-gpus=0")


# ------------------------------------------------------------------------------------------- invalid files

BAD = [
    ("[federation]\nhospitals = 0\n", "federation.hospitals"),
    ("[federation]\nhospitals = 'many'\n", "federation.hospitals"),
    ("[federation]\nhospitals = 4\ntrain-per-round = 5\n", "federation.train-per-round"),
    ("[federation]\nhospitls = 4\n", "federation.hospitls"),
    ("[federaton]\nhospitals = 4\n", "federaton.hospitals"),
    ("federation = 4\n", "'federation'"),
    ("[data]\nshots = 0\n", "data.shots"),
    ("[data]\nshots = [1, 'two']\n", "data.shots"),
    ("[data]\nshift = 'sideways'\n", "data.shift"),
    ("[data]\nshift = 'random'\nhospital-ids = [1, 2]\n", "data.hospital-ids"),
    ("[training]\ngroups = ['policy', 'full']\n", "training.groups"),
    ("[training]\nlr = -1.0\n", "training.lr"),
    ("[strategy]\nname = 'fedsgd'\n", "strategy.name"),
    ("[strategy]\nname = 'median'\n[privacy.central]\nenabled = true\n", "privacy.central.enabled"),
    ("[privacy.central]\nenabled = 'yes'\n", "privacy.central.enabled"),
    ("[privacy.sample]\nsample-rate = 0.3\n", "privacy.sample.sample-rate"),
    ("[privacy.sample]\nsample-rate = 0.0\n", "privacy.sample.sample-rate"),
    ("[faults]\ndropout = 1.5\n", "faults.dropout"),
    ("[faults]\nmalicious = 0.5\n", "faults.attack"),
    ("[faults]\nattack = 'scale'\n", "faults.malicious"),
    ("[faults]\nmalicious = [9]\nattack = 'scale'\n", "faults.malicious"),
    ("[faults]\nmalicious = [0]\nattack = 'bribe'\n", "faults.attack"),
    ("[resources]\ndevice = 'tpu'\n", "resources.device"),
    ("[resources]\nnum-gpus = 2.0\n", "resources.num-gpus"),
    ("[run-config]\nnot-a-key = 1\n", "run-config.not-a-key"),
    ("[run-config]\nlocal-steps = 'ten'\n", "run-config.local-steps"),
    ("[run-config]\nmin-train-hospitals = 3\n", "run-config.min-train-hospitals"),
]


@pytest.mark.parametrize("text,field", BAD)
def test_invalid_scenario_names_the_field(text, field):
    with pytest.raises(ScenarioError) as err:
        parse_scenario(text, source="bad.toml")
    message = str(err.value)
    assert message.startswith("bad.toml: ") and field in message and "\n" not in message


def test_invalid_toml_and_unknown_name():
    with pytest.raises(ScenarioError, match="not valid TOML"):
        parse_scenario("[federation\nhospitals = 4", source="x.toml")
    with pytest.raises(ScenarioError, match="unknown scenario 'nope'.*default"):
        load_scenario("nope")


def test_runner_rejects_an_invalid_file_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[federation]\nhospitals = 4\ntrain-per-round = 40\n")
    assert run_main(["--scenario", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "federation.train-per-round" in err and str(bad) in err
    assert not (tmp_path / "out").exists()


def test_runner_check_prints_the_run_config(tmp_path, capsys):
    assert run_main(["--scenario", "scale-1000", "--check", "--out", str(tmp_path / "o")]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["federation_config"].startswith("num-supernodes=1000 client-resources-num-cpus=1")
    assert shown["run_config"]["out-dir"] == str(tmp_path / "o")


# ------------------------------------------------------------------------------------------- simulation helpers


def test_shot_distribution_is_per_hospital_and_deterministic():
    rc = {"shots": 8, "sim.shots": "1,2,4,8", "seed": 0}
    drawn = [site.sim_shots({"partition-id": p}, rc) for p in range(40)]
    assert set(drawn) <= {1, 2, 4, 8} and len(set(drawn)) > 1
    assert drawn == [site.sim_shots({"partition-id": p}, rc) for p in range(40)]
    assert site.sim_shots({"data-dir": "/x"}, rc) == 8          # a real site uses the configured shots


def test_site_data_cache_is_bounded():
    site._DATA.clear()
    rc = {"sim.phantom-size": 64, "eval-samples": 1, "sim.hospital-offset": 6}
    for p in range(site.DATA_CACHE_SIZE + 5):
        data = site.load_site_data({"partition-id": p}, rc)
        assert data.train[0].name.startswith(f"h{p + 6}_")
    assert len(site._DATA) == site.DATA_CACHE_SIZE


def test_attacks_change_the_update_as_described():
    ref = {"a": torch.zeros(4), "b": torch.ones(2)}
    upd = {"a": torch.full((4,), 0.1), "b": torch.ones(2) * 1.1}
    flipped = site.corrupt(upd, ref, "sign-flip")
    assert torch.allclose(flipped["a"], torch.full((4,), -1.0)) and torch.allclose(flipped["b"], torch.zeros(2), atol=1e-5)
    rnd = site.corrupt(upd, ref, "random", seed=1)
    norm = lambda s: float(torch.sqrt(sum(((s[k] - ref[k]) ** 2).sum() for k in s)))  # noqa: E731
    assert norm(rnd) == pytest.approx(10 * norm(upd), rel=1e-4)
    old = {"a": torch.full((4,), 7.0), "b": torch.full((2,), 7.0)}
    assert torch.equal(site.corrupt(upd, ref, "stale", stale=old)["a"], old["a"])
    with pytest.raises(ValueError, match="sign-flip"):
        site.corrupt(upd, ref, "bribe")


def test_stragglers_are_deterministic_and_only_simulated():
    rc = {"sim.straggler": 0.5, "sim.straggler-delay": 3.0}
    delays = [site.sim_straggler_delay({"partition-id": p}, rc, 1) for p in range(30)]
    assert set(delays) == {0.0, 3.0}
    assert delays == [site.sim_straggler_delay({"partition-id": p}, rc, 1) for p in range(30)]
    assert site.sim_straggler_delay({"data-dir": "/x"}, rc, 1) == 0.0


# ------------------------------------------------------------------------------------------- devices


def test_device_selection_and_cpu_fallback():
    gpu = torch.cuda.is_available()
    assert site.site_device({}, {}).type == ("cuda" if gpu else "cpu")            # auto by default
    assert site.site_device({"device": "cpu"}, {"device": "cuda"}).type == "cpu"  # node config wins
    assert site.site_device({}, {"device": "cpu"}).type == "cpu"
    assert site.adapt_config({}, 4, ("policy",), device=site.site_device({}, {"device": "cpu"})).device == "cpu"
    if not gpu:
        with pytest.raises(site.DeviceError, match="no CUDA GPU"):
            site.site_device({"device": "cuda"}, {})
        with pytest.raises(site.DeviceError, match="unsupported device|unknown device"):
            site.site_device({"device": "tpu"}, {})


def test_central_dp_refuses_faults_that_skip_rounds():
    with pytest.raises(ScenarioError, match="faults.dropout"):
        parse_scenario("[privacy.central]\nenabled = true\n[faults]\ndropout = 0.1\n")


def test_the_documented_example_is_valid():
    import re

    text = (SCENARIO_DIR.parent / "README.md").read_text()
    example = re.search(r"```toml\n(.*?)```", text, re.S).group(1)
    s = parse_scenario(example, source="my-study.toml")
    assert s.supernodes == 200 and s.run_config["min-train-hospitals"] == 50 and s.run_config["sim.attack"]


# ------------------------------------------------------------------------------------------- loss weights


def test_rounds_train_with_the_run_configs_loss_weights_or_the_codecs():
    from simulations import scenario

    assert scenario.LOSS_WEIGHTS == C.LOSS_WEIGHTS
    from fedcodec.losses import default_quality_weights

    default = site.adapt_config({"lambda-d": 3e-4}, 8, ("policy",), has_training_loss=True)
    assert (default.lambda_d, default.lambda_t) == (3e-4, C.DEFAULTS["lambda-t"])   # the run config's
    assert default.quality_weights == default_quality_weights(8)                     # and the loss's defaults
    own = site.adapt_config({"loss-weights": "codec"}, 8, ("policy",), has_training_loss=True)
    assert own.lambda_d is None and own.lambda_t is None and own.quality_weights == []   # the codec's
    # a codec file without a record: the run config's weights even when the codec's are asked for
    bare = site.adapt_config({"loss-weights": "codec", "lambda-d": 3e-4}, 8, ("policy",), has_training_loss=False)
    assert (bare.lambda_d, bare.lambda_t) == (3e-4, C.DEFAULTS["lambda-t"])
    with pytest.raises(ValueError, match="loss-weights must be one of codec, run-config"):
        site.adapt_config({"loss-weights": "mine"}, 8, ("policy",))
