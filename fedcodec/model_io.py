"""Saving and loading codec files, task networks and the embedded default.

A codec file is a ``torch.save`` dict read back with ``weights_only=True`` (no pickled code runs):
``{"format": "fedcodec-codec", "format_version": 1, "config": {...}, "state_dict": {...}, "meta": {...}}``.
The entropy-coder tables are rebuilt on load (``update(force=True)``), so a file is valid whatever the
state of its CDF buffers.

The embedded default (``fedcodec/assets/default/``) holds ``codec.pt``, ``task.pt`` (TorchScript) and
``pretrain.json`` (the command, seed and metrics that produced them). It is used whenever ``--model`` or
``--task`` is omitted.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from fedcodec.codec import SemanticCodec
from fedcodec.errors import ModelFileError, OutputExistsError
from fedcodec.task_net import load_task_network, save_task_network

CODEC_FORMAT = "fedcodec-codec"
CODEC_FORMAT_VERSION = 1
DEFAULT_DIR = Path(__file__).parent / "assets" / "default"
DEFAULT_CODEC = DEFAULT_DIR / "codec.pt"
DEFAULT_TASK = DEFAULT_DIR / "task.pt"


def check_new_output(path: str | Path, overwrite: bool = False) -> Path:
    """Refuse to overwrite an existing file unless ``overwrite``; create the parent folder."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists already; choose another path or pass --overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename, so a failure never leaves half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_codec(codec: SemanticCodec, path: str | Path, meta: dict[str, Any] | None = None,
               overwrite: bool = False) -> Path:
    """Save a codec (entropy tables updated first). Returns the path."""
    path = check_new_output(path, overwrite)
    codec.update(force=True)
    payload = {"format": CODEC_FORMAT, "format_version": CODEC_FORMAT_VERSION, "config": dict(codec.config),
               "state_dict": {k: v.detach().cpu() for k, v in codec.state_dict().items()},
               "meta": {**(meta or {}), "model_id": codec.identity_hash(), "base_id": codec.identity_hash(["base"]),
                        "parameter_counts": codec.parameter_counts()}}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_tagged_file(path: str | Path, fmt: str, version: int, what: str) -> dict:
    """Read a fedcodec file written with ``torch.save`` (weights only: no pickled code runs) and check its tag.

    Every fedcodec file that is a dict of tensors (codec files, federation checkpoints) carries
    ``"format": fmt`` and ``"format_version": version``; ``what`` names the kind of file in the errors.
    Raises :class:`ModelFileError` for a missing or unreadable file, a foreign tag or another version.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{what} not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelFileError(f"{path} is not a fedcodec {what} ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise ModelFileError(f"{path} is not a fedcodec {what} (no '{fmt}' format tag)")
    if payload.get("format_version") != version:
        raise ModelFileError(f"{path}: unsupported {what} version {payload.get('format_version')} "
                             f"(this fedcodec reads version {version})")
    return payload


def read_codec_file(path: str | Path) -> dict:
    """Read and validate a codec file's dict without building the model."""
    return read_tagged_file(path, CODEC_FORMAT, CODEC_FORMAT_VERSION, "codec file")


def load_codec(path: str | Path | None = None) -> SemanticCodec:
    """Load a codec file (the embedded default when ``path`` is None), in eval mode with tables built."""
    if path is None:
        path = DEFAULT_CODEC
        if not path.is_file():
            raise ModelFileError(f"no embedded default codec at {path}; run `fedcodec pretrain` or pass --model")
    payload = read_codec_file(path)
    try:
        codec = SemanticCodec(**payload["config"])
        codec.load_state_dict(payload["state_dict"])
    except (TypeError, RuntimeError, KeyError, ValueError) as exc:
        first = " ".join(str(exc).split())[:300]   # torch lists every mismatching key on its own line
        raise ModelFileError(f"{path}: the weights do not fit the recorded codec configuration: {first}") from exc
    bad = [k for k, v in codec.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ModelFileError(f"{path}: {len(bad)} tensor(s) hold NaN or infinite values (e.g. {bad[0]})")
    try:
        codec.update(force=True)
    except Exception as exc:  # entropy tables from nonsense parameters
        raise ModelFileError(f"{path}: cannot build the entropy coder's tables from these weights "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from exc
    return codec.eval()


def load_task(path: str | Path | None = None) -> nn.Module:
    """Load a TorchScript task network (the embedded default when ``path`` is None), frozen."""
    if path is None:
        path = DEFAULT_TASK
        if not path.is_file():
            raise ModelFileError(f"no embedded default task network at {path}; run `fedcodec task-train` "
                                 "or pass --task")
    return load_task_network(path)


def save_task(net: nn.Module, path: str | Path, overwrite: bool = False) -> Path:
    """Save a task network as TorchScript."""
    path = check_new_output(path, overwrite)
    save_task_network(net, path)
    return path


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON (atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())
