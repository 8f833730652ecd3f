"""Saving and loading codec files, task networks and the embedded default.

A codec file (the weights that travel between sites: a pretrained codec provisioned at every hospital, an
adapted codec exported by ``fedcodec adapt`` or a federation) is a safetensors file: the state dict's tensors
and a JSON header of strings ``format`` (``"fedcodec-codec"``), ``format_version`` (``"2"``), ``model_id``,
``base_id`` (identity hashes), ``config`` (the architecture, JSON) and ``meta`` (JSON: how it was made). Reading
it runs no code. Codec files of version 1, a ``torch.save`` dict ``{"format", "format_version": 1, "config",
"state_dict", "meta"}`` read with ``weights_only=True`` (the embedded default among them), are still read;
whatever the file name, the content decides. The entropy-coder tables are rebuilt on load
(``update(force=True)``), so a file is valid whatever the state of its CDF buffers.

The embedded default (``fedcodec/assets/default/``) holds ``codec.pt``, ``task.pt`` and ``pretrain.json``
(the recipe, seeds and metrics that produced them). It is used whenever ``--model`` or ``--task`` is omitted.
Earlier embedded defaults keep their codec under ``fedcodec/assets/default-DATE/`` so that the bitstreams they
wrote still decode without ``--model`` (:func:`embedded_codec_for`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from fedcodec.codec import SemanticCodec
from fedcodec.errors import ModelFileError, OutputExistsError
from fedcodec.losses import training_loss_from_meta
from fedcodec.task_net import load_task_network, save_task_network

CODEC_FORMAT = "fedcodec-codec"
CODEC_FORMAT_VERSION = 2          # safetensors
TORCH_CODEC_FORMAT_VERSION = 1    # the torch.save dict that earlier versions wrote (still read)
ASSETS_DIR = Path(__file__).parent / "assets"
DEFAULT_DIR = ASSETS_DIR / "default"
DEFAULT_CODEC = DEFAULT_DIR / "codec.pt"
DEFAULT_TASK = DEFAULT_DIR / "task.pt"
#: Codecs of earlier embedded defaults by the model id their bitstreams carry (the first 12 hex digits of the
#: identity hash): a bitstream written with one of them decodes without ``--model``.
PREVIOUS_DEFAULT_CODECS = {"d3afa89ddaaa": ASSETS_DIR / "default-2026-11-23" / "codec.pt",
                           "0622d19abf87": ASSETS_DIR / "default-2026-11-27" / "codec.pt",
                           "f261d906945a": ASSETS_DIR / "default-2026-11-27-evening" / "codec.pt"}


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
    from safetensors.torch import save

    codec.update(force=True)
    model_id, base_id = codec.identity_hash(), codec.identity_hash(["base"])
    meta = {**(meta or {}), "model_id": model_id, "base_id": base_id, "parameter_counts": codec.parameter_counts()}
    if codec.training_loss is not None and "training_loss" not in meta:
        # carried from file to file (an adapted or exported codec keeps the trade-off it was trained with)
        meta["training_loss"] = dataclasses.asdict(codec.training_loss)
    header = {"format": CODEC_FORMAT, "format_version": str(CODEC_FORMAT_VERSION), "model_id": model_id,
              "base_id": base_id, "config": json.dumps(dict(codec.config)), "meta": json.dumps(meta, default=_jsonable)}
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in codec.state_dict().items()}
    atomic_write_bytes(path, save(tensors, metadata=header))
    return path


def _jsonable(value: Any) -> Any:
    """JSON for the plain values that a codec file's ``meta`` may hold besides JSON types."""
    if hasattr(value, "item") and callable(value.item):   # numpy / torch scalars
        return value.item()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)   # paths and the like


def is_safetensors_file(path: str | Path) -> bool:
    """Whether ``path`` starts like a safetensors file (an 8-byte header length, then a JSON object)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return False
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= size - 8 and head[8:9] == b"{"


def read_safetensors(path: str | Path, fmt: str, version: str, what: str,
                     readable: str = "") -> tuple[dict, dict]:
    """Read a fedcodec safetensors file: ``(header metadata, state dict)``, its ``format`` tag and
    ``format_version`` checked (``readable`` says which versions, in the error). Raises
    :class:`ModelFileError` naming ``what`` for anything else. Codec and task-network files share it."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path} is not a fedcodec {what} ({type(exc).__name__}: {exc})") from exc
    if header.get("format") != fmt:
        raise ModelFileError(f"{path} is not a fedcodec {what} (no '{fmt}' format tag)")
    if header.get("format_version") != version:
        raise ModelFileError(f"{path}: unsupported {what} version {header.get('format_version')} "
                             f"(this fedcodec reads {readable or 'version ' + version})")
    return header, state


def _read_safetensors_codec(path: Path) -> dict:
    header, state = read_safetensors(path, CODEC_FORMAT, str(CODEC_FORMAT_VERSION), "codec file",
                                     f"versions {TORCH_CODEC_FORMAT_VERSION} and {CODEC_FORMAT_VERSION}")
    try:
        config, meta = json.loads(header["config"]), json.loads(header.get("meta") or "{}")
    except (KeyError, ValueError) as exc:
        raise ModelFileError(f"{path}: the header's config or meta is not valid JSON ({exc})") from exc
    if not isinstance(config, dict) or not isinstance(meta, dict):
        raise ModelFileError(f"{path}: the header's config and meta must be JSON objects")
    return {"format": CODEC_FORMAT, "format_version": CODEC_FORMAT_VERSION, "config": config,
            "state_dict": state, "meta": meta}


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
    """Read and validate a codec file without building the model: safetensors (version 2) or a torch file of
    version 1. Returns ``{"format", "format_version", "config", "state_dict", "meta"}`` for both."""
    path = Path(path)
    if path.is_file() and is_safetensors_file(path):
        return _read_safetensors_codec(path)
    return read_tagged_file(path, CODEC_FORMAT, TORCH_CODEC_FORMAT_VERSION, "codec file")


def load_codec(path: str | Path | None = None, device: str | torch.device = "cpu") -> SemanticCodec:
    """Load a codec file (the embedded default when ``path`` is None), in eval mode with tables built, on
    ``device`` (``auto``, ``cpu``, ``cuda``; see :mod:`fedcodec.device`)."""
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
    try:
        codec.training_loss = training_loss_from_meta(payload.get("meta") or {}, codec.num_qualities)
    except ValueError as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    bad = [k for k, v in codec.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ModelFileError(f"{path}: {len(bad)} tensor(s) hold NaN or infinite values (e.g. {bad[0]})")
    try:
        codec.update(force=True)
    except Exception as exc:  # entropy tables from nonsense parameters
        raise ModelFileError(f"{path}: cannot build the entropy coder's tables from these weights "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from exc
    if str(device) != "cpu":
        from fedcodec.device import resolve_device

        codec.to(resolve_device(device))
    return codec.eval()


def embedded_codec_for(model_id: bytes) -> Path | None:
    """The codec file of an earlier embedded default that wrote a bitstream with ``model_id`` (its header's
    short id: 4 bytes, or 6 in container versions 1-2), or None (then the current default applies, and a mismatch
    is reported as usual). Keys are the first 6 bytes of each codec's identity hash, so a short id is a prefix."""
    wanted = model_id.hex()
    if len(model_id) < 4:
        return None
    return next((path for key, path in PREVIOUS_DEFAULT_CODECS.items() if key.startswith(wanted)), None)


def load_task(path: str | Path | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """Load a TorchScript task network (the embedded default when ``path`` is None), frozen, on ``device``."""
    if path is None:
        path = DEFAULT_TASK
        if not path.is_file():
            raise ModelFileError(f"no embedded default task network at {path}; run `fedcodec task-train` "
                                 "or pass --task")
    net = load_task_network(path)
    if str(device) != "cpu":
        from fedcodec.device import resolve_device

        net.to(resolve_device(device))
    return net


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
