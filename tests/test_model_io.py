"""The one reader of fedcodec's tagged torch files (codec files, federation checkpoints)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedcodec.errors import ModelFileError
from fedcodec.model_io import CODEC_FORMAT, read_codec_file, read_tagged_file
from server.federation import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, load_checkpoint


def test_tagged_reader_checks_existence_tag_and_version(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"format": "x-test", "format_version": 3, "t": torch.ones(2)}, good)
    assert torch.equal(read_tagged_file(good, "x-test", 3, "test file")["t"], torch.ones(2))
    with pytest.raises(ModelFileError, match="test file not found"):
        read_tagged_file(tmp_path / "missing.pt", "x-test", 3, "test file")
    with pytest.raises(ModelFileError, match=r"no 'y-test' format tag"):
        read_tagged_file(good, "y-test", 3, "test file")
    with pytest.raises(ModelFileError, match=r"unsupported test file version 3 \(this fedcodec reads version 4\)"):
        read_tagged_file(good, "x-test", 4, "test file")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ModelFileError, match="is not a fedcodec test file"):
        read_tagged_file(junk, "x-test", 3, "test file")


def test_codec_files_and_checkpoints_use_it(tmp_path):
    wrong_kind = tmp_path / "ckpt.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION}, wrong_kind)
    with pytest.raises(ModelFileError, match=f"not a fedcodec codec file .no '{CODEC_FORMAT}'"):
        read_codec_file(wrong_kind)
    newer = tmp_path / "newer.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION + 1, "history": "[]"}, newer)
    with pytest.raises(ModelFileError, match="unsupported federation checkpoint version"):
        load_checkpoint(newer)


# ------------------------------------------------------------------ codec files: safetensors, old torch files
def test_codec_file_is_safetensors_with_a_json_header(tmp_path):
    import json

    from safetensors import safe_open

    from conftest import make_tiny_codec
    from fedcodec.model_io import CODEC_FORMAT_VERSION, is_safetensors_file, load_codec, save_codec

    codec = make_tiny_codec(0)
    path = save_codec(codec, tmp_path / "codec.pt", meta={"note": "test"})
    assert is_safetensors_file(path)
    with safe_open(str(path), framework="pt") as f:   # readable by any safetensors reader, no fedcodec code
        header = f.metadata()
        keys = set(f.keys())
    assert header["format"] == "fedcodec-codec" and header["format_version"] == str(CODEC_FORMAT_VERSION)
    assert header["model_id"] == codec.identity_hash() and header["base_id"] == codec.identity_hash(["base"])
    assert json.loads(header["config"]) == json.loads(json.dumps(codec.config))
    assert json.loads(header["meta"])["note"] == "test"
    assert keys == set(codec.state_dict())
    loaded = load_codec(path)
    assert loaded.identity_hash() == codec.identity_hash()
    for k, v in codec.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_version_1_torch_codec_files_still_load_and_decode_old_bitstreams(tmp_path):
    from conftest import make_tiny_codec
    from fedcodec.coding import decode_image, encode_image
    from fedcodec.data import make_phantoms
    from fedcodec.model_io import is_safetensors_file, load_codec

    codec = make_tiny_codec(0)
    old = tmp_path / "old.pt"   # exactly what save_codec wrote before format version 2
    torch.save({"format": CODEC_FORMAT, "format_version": 1, "config": dict(codec.config),
                "state_dict": {k: v.detach().cpu() for k, v in codec.state_dict().items()},
                "meta": {"model_id": codec.identity_hash()}}, old)
    assert not is_safetensors_file(old)
    loaded = load_codec(old)
    assert loaded.identity_hash() == codec.identity_hash()
    image = make_phantoms(1, seed=2, size=64)[0].image
    data = encode_image(codec, image, 1).data
    assert np.array_equal(decode_image(loaded, data)[0], decode_image(codec, data)[0])


def test_bad_safetensors_codec_files(tmp_path):
    from safetensors.torch import save_file

    from conftest import make_tiny_codec
    from fedcodec.model_io import save_codec

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"format": "pt"})
    with pytest.raises(ModelFileError, match="no 'fedcodec-codec' format tag"):
        read_codec_file(foreign)
    newer = tmp_path / "newer.safetensors"
    save_file({"w": torch.zeros(2)}, str(newer), metadata={"format": CODEC_FORMAT, "format_version": "9"})
    with pytest.raises(ModelFileError, match="unsupported codec file version 9"):
        read_codec_file(newer)
    good = save_codec(make_tiny_codec(0), tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(ModelFileError, match="not a fedcodec codec file"):
        read_codec_file(truncated)


def test_export_reads_a_safetensors_codec_file(tmp_path):
    from conftest import make_tiny_codec
    from fedcodec.export import read_subset
    from fedcodec.model_io import save_codec

    adapted = make_tiny_codec(0)
    with torch.no_grad():
        adapted.policy.out.bias.add_(0.25)
    path = save_codec(adapted, tmp_path / "adapted.pt")
    state, groups, info = read_subset(path, make_tiny_codec(0))
    assert info["kind"] == "codec file" and set(groups) == {"policy", "adapters"}
    assert torch.equal(state["policy.out.bias"], adapted.policy.out.bias)


def test_codec_files_carry_the_training_trade_off(tmp_path):
    """load_codec reads the loss weights a codec was trained with (its pretrain record, or a training_loss record),
    save_codec carries them to the next file (an adapted codec keeps them), and a damaged record is refused."""
    from conftest import make_tiny_codec
    from fedcodec.losses import LossWeights
    from fedcodec.model_io import load_codec, save_codec

    default = load_codec(None)   # the embedded default: its pretrain record's semantic stage and quality weights
    assert default.training_loss.lambda_d == 5e-4 and default.training_loss.lambda_t == 1.0
    assert default.training_loss.quality_weights[0] == 0.04 and default.training_loss.quality_weights[-1] == 32.0
    codec = make_tiny_codec(0)
    q = codec.num_qualities
    stages = [{"lambda_d": 2e-3, "lambda_t": 0.0}, {"lambda_d": 7e-4, "lambda_t": 0.5}]
    first = save_codec(codec, tmp_path / "a.pt", meta={"pretrain": {"config": {"stages": stages,
                                                                            "quality_weights": [1.0] * q}}})
    loaded = load_codec(first)
    assert loaded.training_loss == LossWeights(7e-4, 0.5, 0.0, [1.0] * q)
    second = load_codec(save_codec(loaded, tmp_path / "b.pt", meta={"adapt": {"note": "no pretrain record"}}))
    assert second.training_loss == loaded.training_loss
    assert load_codec(save_codec(make_tiny_codec(0), tmp_path / "c.pt")).training_loss is None
    for bad, word in (({"lambda_d": -1.0, "lambda_t": 1.0}, "negative or non-finite"),
                      ({"lambda_d": float("nan"), "lambda_t": 1.0}, "negative or non-finite"),
                      ({"lambda_d": 1e-3, "lambda_t": 1.0, "quality_weights": [1.0]}, "quality weights for"),
                      ({"lambda_t": 1.0}, "not a set of loss weights"), ("oops", "must be a mapping")):
        path = save_codec(make_tiny_codec(0), tmp_path / "bad.pt", meta={"training_loss": bad}, overwrite=True)
        with pytest.raises(ModelFileError, match=word):
            load_codec(path)
