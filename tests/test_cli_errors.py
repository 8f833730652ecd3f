"""A table of bad command lines: each must end with exit status 2, exactly one line on stderr that names
the problem, no traceback, and nothing written or changed on disk."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from fedcodec.bitstream import Header, pack
from fedcodec.cli import main

from conftest import make_tiny_codec


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares ``width x height`` (no pixel data needed to trip Pillow's bomb check)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + \
        chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_codec_path, other_codec_path, tiny_task_path, phantom_dir):
    """Inputs of every case, in their own folder (the snapshot below covers the whole work folder)."""
    from fedcodec.coding import encode_image
    from fedcodec.data import read_image
    from fedcodec.model_io import load_codec, save_codec

    d = tmp_path_factory.mktemp("cli_inputs")
    f = {"codec": tiny_codec_path, "other": other_codec_path, "task": tiny_task_path, "data": phantom_dir,
         "image": phantom_dir / "images" / "h1_0000.png"}
    codec = load_codec(tiny_codec_path)
    image, _, window = read_image(f["image"])
    f["fcd"] = d / "a.fcd"
    f["fcd"].write_bytes(encode_image(codec, image, 1, window).data)
    data = f["fcd"].read_bytes()
    f["truncated"] = d / "truncated.fcd"
    f["truncated"].write_bytes(data[:len(data) // 2])
    f["garbage"] = d / "garbage.fcd"
    body = data[:30] + np.random.default_rng(0).bytes(len(data) - 34)
    f["garbage"].write_bytes(body + struct.pack("<I", zlib.crc32(body)))
    f["huge"] = d / "huge.fcd"
    from fedcodec.coding import model_id
    f["huge"].write_bytes(pack(Header(model_id(codec), 100000, 100000, 8, (0.0, 255.0), 0), b"\x01" * 308))
    f["junk"] = d / "junk.bin"
    f["junk"].write_bytes(b"this is not an image, a model or a bitstream\n" * 10)
    f["bomb"] = d / "bomb.png"
    f["bomb"].write_bytes(_png_header_only(20000, 20000))
    nan_codec = make_tiny_codec(0)
    with torch.no_grad():
        nan_codec.g_s[-1].bias.fill_(float("nan"))
    f["nan_codec"] = d / "nan_codec.pt"
    save_codec_raw(nan_codec, f["nan_codec"])
    from fedcodec.model_io import read_codec_file

    neg = {**read_codec_file(tiny_codec_path), "format_version": 1}   # as a version-1 torch codec file
    neg["config"]["gain_range"] = [-0.25, 2.0]
    f["neg_codec"] = d / "neg_codec.pt"
    torch.save(neg, f["neg_codec"])
    f["mismatch_ckpt"] = d / "ckpt_other_base.pt"
    other = load_codec(other_codec_path)
    torch.save({"format": "fedcodec-fl-checkpoint", "format_version": 1, "round": 3,
                "subset": other.group_state_dict(), "meta": '{"base_hash": "%s"}' % other.identity_hash(["base"]),
                "history": "[]", "strategy": {"name": "SubsetFedAvg"}}, f["mismatch_ckpt"])
    f["empty_dir"] = d / "empty"
    f["empty_dir"].mkdir()
    f["a_file"] = d / "plain_file.txt"
    f["a_file"].write_text("a file, not a folder\n")
    f["user_folder"] = d / "user_folder"
    (f["user_folder"] / "images").mkdir(parents=True)
    (f["user_folder"] / "images" / "my_scan.png").write_bytes(f["image"].read_bytes())
    f["existing_out"] = d / "existing.fcd"
    f["existing_out"].write_bytes(b"mine")
    f["adapt_json"] = d / "adapted.pt.json"      # a file beside an adapt output that must not be replaced
    f["adapt_json"].write_text('{"mine": true}\n')
    return f


def save_codec_raw(codec, path: Path) -> None:
    """A codec file as save_codec writes it, without save_codec's table update (which NaN would break)."""
    torch.save({"format": "fedcodec-codec", "format_version": 1, "config": dict(codec.config),
                "state_dict": {k: v.detach() for k, v in codec.state_dict().items()}, "meta": {}}, path)


# (id, argv with {placeholders} for files and {out} for the output folder, expected text in the message)
CASES = [
    ("encode-missing-input", "encode --model {codec} {out}/nope.png {out}/a.fcd", "does not exist"),
    ("encode-not-an-image", "encode --model {codec} {junk} {out}/a.fcd", "not a readable image"),
    ("encode-quality-0", "encode --model {codec} --quality 0 {image} {out}/a.fcd", "--quality"),
    ("encode-quality-too-high", "encode --model {codec} --quality 9 {image} {out}/a.fcd", "--quality must be 1..4"),
    ("encode-quality-text", "encode --model {codec} --quality abc {image} {out}/a.fcd", "expected an integer"),
    ("encode-quality-nan", "encode --model {codec} --quality nan {image} {out}/a.fcd", "--quality"),
    ("encode-output-exists", "encode --model {codec} {image} {existing_out}", "exists already"),
    ("encode-parent-is-file", "encode --model {codec} {image} {a_file}/x.fcd", "is a file"),
    ("encode-output-is-folder", "encode --model {codec} {image} {empty_dir}", "is a folder"),
    ("encode-model-junk", "encode --model {junk} {image} {out}/a.fcd", "not a fedcodec codec file"),
    ("encode-model-nan", "encode --model {nan_codec} {image} {out}/a.fcd", "NaN"),
    ("encode-model-negative-gain", "encode --model {neg_codec} {image} {out}/a.fcd", "do not fit"),
    ("encode-pixel-bomb", "encode --model {codec} {bomb} {out}/a.fcd", "too large"),
    ("decode-missing", "decode --model {codec} {out}/none.fcd {out}/a.png", "not found"),
    ("decode-junk", "decode --model {codec} {junk} {out}/a.png", "not a fedcodec bitstream"),
    ("decode-truncated", "decode --model {codec} {truncated} {out}/a.png", "truncated"),
    ("decode-huge-header", "decode --model {codec} {huge} {out}/a.png", "100000x100000"),
    ("decode-other-model", "decode --model {other} {fcd} {out}/a.png", "made by model"),
    ("decode-garbage-payload", "decode --model {codec} {garbage} {out}/a.png", "payload is corrupt"),
    ("decode-output-exists", "decode --model {codec} {fcd} {existing_out}", "exists already"),
    ("decode-parent-is-file", "decode --model {codec} {fcd} {a_file}/o.png", "is a file"),
    ("inspect-not-png", "inspect --model {codec} {fcd} {out}/a.jpg", "PNG"),
    ("inspect-garbage", "inspect --model {codec} {garbage} {out}/a.png", "payload is corrupt"),
    ("inspect-huge-header", "inspect --model {codec} {huge} {out}/a.png", "100000x100000"),
    ("info-model-junk", "info --model {junk}", "not a fedcodec codec file"),
    ("info-model-nan", "info --model {nan_codec}", "NaN"),
    ("info-model-negative-gain", "info --model {neg_codec}", "do not fit"),
    ("info-model-missing", "info --model {out}/none.pt", "not found"),
    ("adapt-lr-nan", "adapt --model {codec} --task {task} --data {data} --shots 1 --lr nan --out {out}/a.pt", "finite"),
    ("adapt-lr-negative", "adapt --model {codec} --task {task} --data {data} --shots 1 --lr -1 --out {out}/a.pt", "> 0"),
    ("adapt-lr-inf", "adapt --model {codec} --task {task} --data {data} --shots 1 --lr inf --out {out}/a.pt", "finite"),
    ("adapt-groups-base", "adapt --model {codec} --task {task} --data {data} --shots 1 --groups base --out {out}/a.pt",
     "--groups"),
    ("adapt-groups-unknown", "adapt --model {codec} --task {task} --data {data} --shots 1 --groups foo --out {out}/a.pt",
     "--groups"),
    ("adapt-shots-0", "adapt --model {codec} --task {task} --data {data} --shots 0 --out {out}/a.pt", "--shots"),
    ("adapt-shots-1000", "adapt --model {codec} --task {task} --data {data} --shots 1000 --out {out}/a.pt", "--shots"),
    ("adapt-steps-0", "adapt --model {codec} --task {task} --data {data} --shots 1 --steps 0 --out {out}/a.pt",
     "--steps"),
    ("adapt-dp-delta-2", "adapt --model {codec} --task {task} --data {data} --shots 1 --dp-noise 1 --dp-delta 2 "
     "--out {out}/a.pt", "--dp-delta"),
    ("adapt-dp-noise-negative", "adapt --model {codec} --task {task} --data {data} --shots 1 --dp-noise -1 "
     "--out {out}/a.pt", "--dp-noise"),
    ("adapt-json-beside-exists", "adapt --model {codec} --task {task} --data {data} --shots 1 --steps 1 "
     "--out {adapt_out}", "adapted.pt.json exists already"),
    ("adapt-missing-data", "adapt --model {codec} --task {task} --data {out}/nodata --shots 1 --out {out}/a.pt",
     "does not exist"),
    ("evaluate-bandwidth-negative", "evaluate --model {codec} --task {task} --data {data} --out {out}/ev "
     "--bandwidth -5", "--bandwidth"),
    ("evaluate-out-is-file", "evaluate --model {codec} --task {task} --data {data} --out {a_file}", "is a file"),
    ("evaluate-limit-0", "evaluate --model {codec} --task {task} --data {data} --out {out}/ev --limit 0", "--limit"),
    ("evaluate-study-images-0", "evaluate --model {codec} --task {task} --data {data} --out {out}/ev "
     "--study-images 0", "--study-images"),
    ("evaluate-empty-data", "evaluate --model {codec} --task {task} --data {empty_dir} --out {out}/ev", "not a data folder"),
    ("evaluate-compare-bad", "evaluate --model {codec} --task {task} --data {data} --out {out}/ev --compare x",
     "NAME=PATH"),
    ("evaluate-unknown-anchor", "evaluate --model {codec} --task {task} --data {data} --out {out}/ev --anchors bmp9",
     "bmp9"),
    ("phantoms-n-0", "phantoms --out {out}/ph --n 0", "--n"),
    ("phantoms-size-10", "phantoms --out {out}/ph --size 10", "--size"),
    ("phantoms-seed-negative", "phantoms --out {out}/ph --seed -1", "--seed"),
    ("phantoms-hospital-negative", "phantoms --out {out}/ph --hospital -3", "--hospital"),
    ("phantoms-out-is-file", "phantoms --out {a_file}", "is a file"),
    ("phantoms-overwrite-user-folder", "phantoms --out {user_folder} --n 1 --overwrite", "fedcodec phantoms"),
    ("pretrain-steps-0", "pretrain --out {out}/pre --steps 0", "--steps"),
    ("pretrain-lambda-adv-nan", "pretrain --out {out}/pre --lambda-adv nan", "finite"),
    ("pretrain-intensity-windows-above-1", "pretrain --out {out}/pre --intensity-windows 1.5", "--intensity-windows"),
    ("pretrain-hyper-rate-weight-negative", "pretrain --out {out}/pre --hyper-rate-weight -1", "--hyper-rate-weight"),
    ("pretrain-hyper-rate-weight-per-quality-count", "pretrain --out {out}/pre --hyper-rate-weight 8,4,2",
     "one per quality"),
    ("pretrain-out-is-file", "pretrain --out {a_file} --steps 1", "is a file"),
    ("task-train-steps-0", "task-train --data {data} --out {out}/t.pt --steps 0", "--steps"),
    ("export-subset-junk", "export --model {codec} --subset {junk} --out {out}/e.pt", "not a readable torch file"),
    ("export-subset-missing", "export --model {codec} --subset {out}/none.pt --out {out}/e.pt", "not found"),
    ("export-subset-other-base", "export --model {codec} --subset {mismatch_ckpt} --out {out}/e.pt",
     "base codec"),
    ("unknown-command", "compress {image}", "invalid choice"),
    ("missing-argument", "encode --model {codec} {image}", "required"),
    ("unknown-flag", "decode --model {codec} --fast {fcd} {out}/a.png", "unrecognized"),
]


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_size if p.is_file() else 0,
                                       p.stat().st_mtime_ns if p.is_file() else 0)
            for p in root.rglob("*")}


def test_the_table_is_large_enough():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name, argv, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_command_line(name, argv, expected, files, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    fill = {k: str(v) for k, v in files.items()}
    fill["out"] = str(out)
    fill["adapt_out"] = str(files["adapt_json"].parent / "adapted.pt")
    roots = [tmp_path, files["junk"].parent]
    before = [_snapshot(r) for r in roots]
    code = main(["-q", *argv.format(**fill).split()])
    _, err = capsys.readouterr()
    assert code == 2, (name, code, err)
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, (name, err)
    assert lines[0].startswith("fedcodec: error: ") and "Traceback" not in err, err
    assert expected.lower() in err.lower(), (name, err)
    assert [_snapshot(r) for r in roots] == before, f"{name} changed files on disk"


def test_phantoms_overwrite_replaces_only_its_own_folder(tmp_path, capsys):
    out = tmp_path / "ph"
    assert main(["-q", "phantoms", "--out", str(out), "--n", "2", "--size", "64"]) == 0
    (out / "notes.txt").write_text("my notes\n")
    assert main(["-q", "phantoms", "--out", str(out), "--n", "1", "--size", "64", "--overwrite"]) == 0
    assert sorted(p.name for p in (out / "images").iterdir()) and (out / "notes.txt").read_text() == "my notes\n"
    assert len(list((out / "images").iterdir())) == 1
    (out / "images" / "mine.png").write_bytes((out / "images").iterdir().__next__().read_bytes())
    capsys.readouterr()
    assert main(["-q", "phantoms", "--out", str(out), "--n", "1", "--size", "64", "--overwrite"]) == 2
    assert "images/mine.png" in capsys.readouterr().err
    assert (out / "images" / "mine.png").exists()
