"""The command line: real files in, real files out, and one clear line for every bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fedcodec.cli import main


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["-q", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def expect_error(capsys, pattern: str, *argv) -> str:
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    assert err.startswith("fedcodec: error:") and "Traceback" not in err
    assert pattern.lower() in err.lower(), err
    return err


@pytest.fixture()
def bitstream(tmp_path, capsys, tiny_codec_path, phantom_dir):
    out = tmp_path / "a.fcd"
    code, _, err = run(capsys, "encode", "--model", tiny_codec_path, "--quality", 2,
                       phantom_dir / "images" / "h1_0000.png", out)
    assert code == 0, err
    return out


def test_encode_decode_round_trip(tmp_path, capsys, tiny_codec_path, bitstream, phantom_dir):
    from conftest import assert_decoded_is_forward_output

    from fedcodec.model_io import load_codec

    out = tmp_path / "a.png"
    code, stdout, err = run(capsys, "decode", "--model", tiny_codec_path, bitstream, out)
    assert code == 0, err
    img = np.asarray(Image.open(out))
    original = np.asarray(Image.open(phantom_dir / "images" / "h1_0000.png"))
    # the PNG holds the codec's own reconstruction at the encoded quality (--quality 2 = index 1)
    assert_decoded_is_forward_output(load_codec(tiny_codec_path), original, img, quality=1)


def test_output_exists_is_not_overwritten(tmp_path, capsys, tiny_codec_path, bitstream, phantom_dir):
    before = bitstream.read_bytes()
    expect_error(capsys, "exists", "encode", "--model", tiny_codec_path, "--quality", 4,
                 phantom_dir / "images" / "h1_0000.png", bitstream)
    assert bitstream.read_bytes() == before
    code, _, _ = run(capsys, "encode", "--model", tiny_codec_path, "--quality", 4, "--overwrite",
                     phantom_dir / "images" / "h1_0000.png", bitstream)
    assert code == 0 and bitstream.read_bytes() != before


def test_bad_bitstreams(tmp_path, capsys, tiny_codec_path, other_codec_path, bitstream, phantom_dir):
    data = bitstream.read_bytes()
    truncated = tmp_path / "t.fcd"
    truncated.write_bytes(data[: len(data) // 2])
    expect_error(capsys, "truncated", "decode", "--model", tiny_codec_path, truncated, tmp_path / "t.png")
    corrupt = tmp_path / "c.fcd"
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x55
    corrupt.write_bytes(bytes(flipped))
    expect_error(capsys, "corrupt", "decode", "--model", tiny_codec_path, corrupt, tmp_path / "c.png")
    expect_error(capsys, "not a fedcodec bitstream", "decode", "--model", tiny_codec_path,
                 phantom_dir / "images" / "h1_0000.png", tmp_path / "f.png")
    expect_error(capsys, "made by model", "decode", "--model", other_codec_path, bitstream, tmp_path / "o.png")
    assert not any((tmp_path / n).exists() for n in ("t.png", "c.png", "f.png", "o.png"))


def test_bad_images(tmp_path, capsys, tiny_codec_path):
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    expect_error(capsys, "not a readable image", "encode", "--model", tiny_codec_path, text, tmp_path / "x.fcd")
    nan = np.full((64, 64), 0.5, np.float32)
    nan[3, 3] = np.nan
    Image.fromarray(nan).save(tmp_path / "nan.tif")
    expect_error(capsys, "nan", "encode", "--model", tiny_codec_path, tmp_path / "nan.tif", tmp_path / "y.fcd")
    expect_error(capsys, "does not exist", "encode", "--model", tiny_codec_path, tmp_path / "missing.png",
                 tmp_path / "z.fcd")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "ok.png")
    expect_error(capsys, "quality", "encode", "--model", tiny_codec_path, "--quality", 99,
                 tmp_path / "ok.png", tmp_path / "q.fcd")


def test_bad_model_files(tmp_path, capsys, tiny_task_path, bitstream):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 100)
    expect_error(capsys, "not a fedcodec codec file", "decode", "--model", junk, bitstream, tmp_path / "j.png")
    expect_error(capsys, "not a fedcodec codec file", "decode", "--model", tiny_task_path, bitstream,
                 tmp_path / "k.png")


def test_evaluate_writes_results(tmp_path, capsys, tiny_codec_path, tiny_task_path, phantom_dir):
    out = tmp_path / "eval"
    code, stdout, err = run(capsys, "evaluate", "--model", tiny_codec_path, "--task", tiny_task_path,
                            "--data", phantom_dir, "--out", out, "--limit", 2, "--anchors", "jpeg,hevc",
                            "--bandwidth", 10)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    points = results["codecs"]["fedcodec"]["points"]
    assert [p["quality"] for p in points] == [1, 2, 3, 4]
    assert {"quality", "bpp", "dice", "psnr", "ms_ssim"} <= set(points[0])
    assert all(0 <= p["dice"] <= 1 and p["bpp"] > 0 for p in points)
    assert 0 <= results["uncompressed_dice"] <= 1 and results["num_images"] == 2
    assert len(results["codecs"]["hevc"]["points"]) >= 6
    assert "bd_rate_vs_hevc" in results["codecs"]["jpeg"]
    assert set(results["latency"]["codecs"]) >= {"uncompressed", "fedcodec", "hevc", "jpeg"}
    assert (out / "rate_dice.png").stat().st_size > 1000 and "| fedcodec |" in (out / "report.md").read_text()
    # a second run into the same folder is refused
    expect_error(capsys, "exists", "evaluate", "--model", tiny_codec_path, "--task", tiny_task_path,
                 "--data", phantom_dir, "--out", out)


def test_evaluate_bad_data(tmp_path, capsys, tiny_codec_path, tiny_task_path, phantom_dir):
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    expect_error(capsys, "empty", "evaluate", "--model", tiny_codec_path, "--task", tiny_task_path,
                 "--data", empty, "--out", tmp_path / "e1")
    bad = tmp_path / "badmask"
    shutil.copytree(phantom_dir, bad)
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(bad / "masks" / "h1_0001.png")
    expect_error(capsys, "differs from image shape", "evaluate", "--model", tiny_codec_path, "--task",
                 tiny_task_path, "--data", bad, "--out", tmp_path / "e2")


def test_adapt_and_export(tmp_path, capsys, tiny_codec_path, tiny_task_path, phantom_dir):
    import torch

    from fedcodec.model_io import load_codec

    out = tmp_path / "adapted.pt"
    code, _, err = run(capsys, "adapt", "--model", tiny_codec_path, "--task", tiny_task_path, "--data",
                       phantom_dir, "--shots", 1, "--steps", 3, "--out", out)
    assert code == 0, err
    record = json.loads((tmp_path / "adapted.pt.json").read_text())
    assert record["samples"] == ["h1_0000"] and record["metrics"]["examples"] == 1
    base, adapted = load_codec(tiny_codec_path), load_codec(out)
    assert adapted.identity_hash(["base"]) == base.identity_hash(["base"])
    assert adapted.identity_hash() != base.identity_hash()
    assert record["trained"] in (["policy", "adapters"], ["policy"])   # adapt's default candidates
    subset = tmp_path / "subset.pt"
    torch.save(adapted.group_state_dict(), subset)
    code, _, err = run(capsys, "export", "--model", tiny_codec_path, "--subset", subset, "--out",
                       tmp_path / "exported.pt")
    assert code == 0, err
    assert load_codec(tmp_path / "exported.pt").identity_hash() == adapted.identity_hash()
    torch.save({"g_a.0.weight": torch.zeros(1)}, tmp_path / "base_subset.pt")
    expect_error(capsys, "adaptable", "export", "--model", tiny_codec_path, "--subset",
                 tmp_path / "base_subset.pt", "--out", tmp_path / "x.pt")


def test_adapt_checks_unannotated_scans(tmp_path, capsys, tiny_codec_path, tiny_task_path, phantom_dir):
    out = tmp_path / "adapted.pt"
    code, stdout, err = run(capsys, "adapt", "--model", tiny_codec_path, "--task", tiny_task_path, "--data",
                            phantom_dir, "--shots", 1, "--steps", 3, "--unlabeled", phantom_dir, "--out", out)
    assert code == 0, err
    record = json.loads((tmp_path / "adapted.pt.json").read_text())
    assert record["unlabeled"] and "archive_top_dice_start" in record["metrics"]
    assert record["selection"] in stdout
    (tmp_path / "empty").mkdir()
    expect_error(capsys, "", "adapt", "--model", tiny_codec_path, "--task", tiny_task_path, "--data", phantom_dir,
                 "--shots", 1, "--unlabeled", tmp_path / "empty", "--out", tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_console_script_has_no_traceback(tmp_path):
    exe = shutil.which("fedcodec") or f"{sys.executable} -m fedcodec.cli"
    proc = subprocess.run([*exe.split(), "decode", str(tmp_path / "missing.fcd"), str(tmp_path / "o.png")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "fedcodec: error:" in proc.stderr and "Traceback" not in proc.stderr
