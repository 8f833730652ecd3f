"""fedcodec export --subset from every artefact a federation writes, end to end through the CLI."""

from __future__ import annotations

import pytest
from conftest_flower import run_config, tiny_assets  # noqa: F401

from fedcodec.cli import main
from fedcodec.export import CHECKPOINT_FORMAT
from fedcodec.model_io import load_codec
from server import federation
from server.federation import load_checkpoint
from simulations.inprocess import run_inprocess


@pytest.fixture(scope="module")
def run_dir(tiny_assets, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("export_run") / "run"
    run_inprocess(run_config(tiny_assets, out), 3)
    return out


def test_checkpoint_format_tag_matches_the_server():
    assert CHECKPOINT_FORMAT == federation.CHECKPOINT_FORMAT


@pytest.mark.parametrize("source", ["checkpoints/round-0001.pt", "checkpoints/latest.pt", ".", "adapted_codec.pt"])
def test_export_then_encode_and_decode(source, run_dir, tiny_assets, tmp_path, capsys):  # noqa: F811
    """round-0001.pt stands for the last checkpoint of a run stopped after round 1."""
    exported = tmp_path / "exported.pt"
    code = main(["-q", "export", "--model", str(tiny_assets["codec"]), "--subset", str(run_dir / source),
                 "--out", str(exported)])
    err = capsys.readouterr().err
    assert code == 0, err
    codec = load_codec(exported)
    if source == "checkpoints/round-0001.pt":
        expect = load_checkpoint(run_dir / source)["subset"]
    else:   # the latest checkpoint is the final subset, merged into adapted_codec.pt
        expect = load_codec(run_dir / "adapted_codec.pt").group_state_dict()
    for k, v in codec.group_state_dict().items():
        assert (v == expect[k]).all(), k
    if source != "checkpoints/round-0001.pt":
        assert codec.identity_hash() == load_codec(run_dir / "adapted_codec.pt").identity_hash()
    from fedcodec.data import make_phantoms, write_folder

    write_folder(make_phantoms(1, seed=3, size=96, hospital=1), tmp_path / "img")
    image = next((tmp_path / "img" / "images").iterdir())
    assert main(["-q", "encode", "--model", str(exported), "--quality", "2", str(image), str(tmp_path / "a.fcd")]) == 0
    assert main(["-q", "decode", "--model", str(exported), str(tmp_path / "a.fcd"), str(tmp_path / "a.png")]) == 0
    assert (tmp_path / "a.png").stat().st_size > 0
    # the base codec cannot decode what the adapted one wrote
    assert main(["-q", "decode", "--model", str(tiny_assets["codec"]), str(tmp_path / "a.fcd"),
                 str(tmp_path / "b.png")]) == 2
