"""The one reader of fedcodec's tagged torch files (codec files, federation checkpoints)."""

from __future__ import annotations

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
