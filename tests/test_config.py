"""Every default is written once: the run config, the CLI flags and AdaptConfig derive from one source, and
pyproject.toml's run-config table is generated from it. Also: the CLI starts without torch."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from fedcodec import run_config as C
from fedcodec.adapt import AdaptConfig, DPConfig
from fedcodec.cli import adapt_config_from_args, build_parser
from fedcodec.losses import LossWeights

ROOT = Path(__file__).resolve().parents[1]


def _flat(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def test_pyproject_run_config_is_generated_from_run_config_module():
    assert C.pyproject_table() == C.render_table(), (
        "pyproject.toml's [tool.flwr.app.config] is stale: run `python -m fedcodec.run_config --write-pyproject`")
    flwr = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]
    assert dict(_flat(flwr["app"]["config"])) == C.DEFAULTS   # the generated TOML parses back, types and all
    assert "federations" not in flwr
    assert flwr["app"]["components"] == {"serverapp": "server.server_app:app", "clientapp": "clients.client_app:app"}


def test_write_pyproject_replaces_only_the_table(tmp_path):
    path = tmp_path / "pyproject.toml"
    path.write_text('[project]\nname = "x"\n\n[tool.flwr.app.config]\nlr = 5.0\nold-key = 1\n\n[tool.other]\na = 1\n')
    assert C.write_pyproject(path) and not C.write_pyproject(path)
    data = tomllib.loads(path.read_text())
    assert dict(_flat(data["tool"]["flwr"]["app"]["config"])) == C.DEFAULTS
    assert data["project"] == {"name": "x"} and data["tool"]["other"] == {"a": 1}


def test_run_config_defaults_derive_from_adapt_and_dp_config(monkeypatch):
    import fedcodec.adapt as A

    monkeypatch.setattr(A, "AdaptConfig", lambda: AdaptConfig(lr=0.123, seed=9, groups=("policy",)))
    monkeypatch.setattr(A, "DPConfig", lambda: DPConfig(noise_multiplier=3.0, max_grad_norm=0.25, delta=1e-7))
    try:
        importlib.reload(C)
        assert {k: C.DEFAULTS[k] for k in ("lr", "seed", "groups")} == {"lr": 0.123, "seed": 9, "groups": "policy"}
        assert (C.DEFAULTS["sample-dp.noise-multiplier"], C.DEFAULTS["sample-dp.max-grad-norm"],
                C.DEFAULTS["sample-dp.delta"]) == (3.0, 0.25, 1e-7)
    finally:
        monkeypatch.undo()
        importlib.reload(C)
    assert C.DEFAULTS["lr"] == AdaptConfig.lr


def test_loss_weights_come_from_the_codec_then_the_loss_defaults():
    from conftest import make_tiny_codec

    from fedcodec.adapt import loss_weights

    # the run config (Flower rounds set them explicitly) takes the loss's defaults, the same objects
    assert C.DEFAULTS["lambda-d"] is LossWeights.lambda_d and C.DEFAULTS["lambda-t"] is LossWeights.lambda_t
    codec = make_tiny_codec(0)
    assert codec.training_loss is None
    assert loss_weights(AdaptConfig(), codec) == LossWeights()          # no record: the loss's defaults
    codec.training_loss = LossWeights(5e-4, 1.0, 0.0, [0.5, 1.0, 2.0, 4.0][:codec.num_qualities])
    assert loss_weights(AdaptConfig(), codec) == codec.training_loss     # the codec's own trade-off
    mixed = loss_weights(AdaptConfig(lambda_d=1e-3, quality_weights=[1.0] * codec.num_qualities), codec)
    assert (mixed.lambda_d, mixed.lambda_t, mixed.quality_weights) == (1e-3, 1.0, [1.0] * codec.num_qualities)


def test_cli_adapt_flags_have_no_defaults_of_their_own():
    parser = build_parser()
    args = parser.parse_args(["adapt", "--data", "d", "--shots", "1", "--out", "o.pt"])
    for name in ("steps", "lr", "groups", "lambda_d", "lambda_t", "seed", "max_grad_norm", "delta"):
        assert not hasattr(args, name), name
    assert adapt_config_from_args(args) == AdaptConfig()
    args = parser.parse_args(["adapt", "--data", "d", "--shots", "1", "--out", "o.pt", "--lr", "0.5", "--groups",
                              "policy", "--dp-noise", "2", "--dp-clip", "0.3"])
    config = adapt_config_from_args(args)
    assert (config.lr, config.groups, config.steps) == (0.5, ("policy",), AdaptConfig.steps)
    assert config.dp == DPConfig(noise_multiplier=2.0, max_grad_norm=0.3)
    pretrain = parser.parse_args(["pretrain", "--out", "x"])
    assert not any(hasattr(pretrain, n) for n in ("steps", "batch_size", "N", "gain_lr_scale", "lambda_adv",
                                                 "intensity_windows"))
    assert parser.parse_args(["pretrain", "--out", "x", "--intensity-windows", "0.5"]).intensity_windows == 0.5
    assert parser.parse_args(["pretrain", "--out", "x", "--window-task"]).window_task is True
    assert parser.parse_args(["pretrain", "--out", "x", "--hyper-rate-weight", "3"]).hyper_rate_weight == 3.0
    assert parser.parse_args(["pretrain", "--out", "x", "--hyper-rate-weight", "8,4,2,1"]).hyper_rate_weight == \
        [8.0, 4.0, 2.0, 1.0]


def test_cli_adapt_candidates(capsys):
    from fedcodec.cli import main
    from fedcodec.run_config import format_candidates, parse_candidates

    parser = build_parser()
    base = ["adapt", "--data", "d", "--shots", "1", "--out", "o.pt"]
    config = adapt_config_from_args(parser.parse_args(base + ["--candidates", "policy+adapters,policy"]))
    assert config.candidates == (("policy", "adapters"), ("policy",))
    assert format_candidates(config.candidates) == "policy+adapters,policy"
    assert parse_candidates("") == ()
    # --groups alone trains exactly those groups; candidates outside --groups are refused
    assert adapt_config_from_args(parser.parse_args(base + ["--groups", "policy"])).candidates == ()
    assert main(["-q", *base, "--groups", "policy", "--candidates", "policy+adapters"]) == 2
    assert "--candidates names groups that --groups does not train: adapters" in capsys.readouterr().err
    assert main(["-q", *base, "--candidates", "policy+base"]) == 2
    assert "--candidates" in capsys.readouterr().err


def test_cli_adapt_rejects_unknown_groups(capsys):
    from fedcodec.cli import main

    assert main(["-q", "adapt", "--data", "d", "--shots", "1", "--out", "o.pt", "--groups", "policy,base"]) == 2
    assert "--groups" in capsys.readouterr().err


def test_cli_help_shows_the_config_defaults():
    text = build_parser()._subparsers._group_actions[0].choices["adapt"].format_help()
    assert f"(default: {AdaptConfig.steps})" in text and f"(default: {DPConfig.delta})" in text


def test_importing_the_cli_and_its_help_import_no_torch():
    code = ("import sys, json\nfrom fedcodec.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n"
            "    pass\nprint(json.dumps(sorted(m for m in ('torch', 'compressai', 'monai', 'flwr', 'opacus') "
            "if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage: fedcodec" in out.stdout
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize("command", ["adapt", "pretrain", "task-train"])
def test_config_flag_defaults_resolve(command):
    parser = build_parser()._subparsers._group_actions[0].choices[command]
    for action in parser._actions:
        if hasattr(action, "config_default"):
            from fedcodec.cli import config_default

            module, _, cls = action.config_default[0].partition(":")
            assert action.config_default[1] in vars(importlib.import_module(module))[cls].__dataclass_fields__
            if config_default(*action.config_default) is None:   # resolved later: the help must say from what
                assert "default:" in action.help, action.dest
