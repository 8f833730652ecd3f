"""Read an adapted parameter subset from any artefact fedcodec writes, and merge it into a base codec.

:func:`read_subset` accepts:

- a federation round checkpoint (``checkpoints/round-NNNN.pt`` or ``latest.pt``: the subset under the key
  ``subset``, the base codec's identity in ``meta``), or a federation run folder (its ``checkpoints/latest.pt``);
- a fedcodec codec file (``fedcodec adapt`` output, a federation's ``adapted_codec.pt``): its adaptable groups;
- a plain state dict of adaptable parameters, or ``{"state": state_dict}``.

Codec files are safetensors (or, before format version 2, torch files); everything else is read with
``torch.load(weights_only=True)`` (no pickled code runs). A subset made for another
base codec is refused with :class:`fedcodec.errors.ModelMismatchError` when the file records its base.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from fedcodec.codec import ADAPTABLE_GROUPS, SemanticCodec, group_of
from fedcodec.errors import ModelFileError, ModelMismatchError
from fedcodec.model_io import is_safetensors_file, read_codec_file

#: The ``format`` tag of the server's round checkpoints (server.federation.CHECKPOINT_FORMAT).
CHECKPOINT_FORMAT = "fedcodec-fl-checkpoint"
CODEC_FORMAT = "fedcodec-codec"


def _resolve(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        for cand in (p / "checkpoints" / "latest.pt", p / "latest.pt"):
            if cand.is_file():
                return cand
        raise ModelFileError(f"{p} is a folder without checkpoints/latest.pt (give a checkpoint or subset file)")
    if not p.is_file():
        raise ModelFileError(f"subset file not found: {p}")
    return p


def read_subset(path: str | Path, base: SemanticCodec) -> tuple[dict[str, torch.Tensor], tuple[str, ...], dict]:
    """The adaptable subset stored in ``path``; returns ``(state, groups, info)``.

    Raises :class:`ModelFileError` for a file that holds no usable subset and :class:`ModelMismatchError`
    for one recorded against another base codec than ``base``.
    """
    p = _resolve(path)
    if is_safetensors_file(p):   # a codec file (format version 2), the only safetensors file fedcodec writes
        payload: Any = read_codec_file(p)
    else:
        try:
            payload = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelFileError(f"{p} is not a readable torch file ({type(exc).__name__}: "
                                 f"{' '.join(str(exc).split())[:200]})") from exc
    base_hash = base.identity_hash(["base"])
    info: dict[str, Any] = {"file": str(p)}
    recorded_base = None
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        state = payload.get("subset")
        try:
            meta = json.loads(payload.get("meta") or "{}")
        except (TypeError, ValueError):
            meta = {}
        recorded_base = meta.get("base_hash")
        info.update(kind="federation checkpoint", round=int(payload.get("round", -1)))
    elif isinstance(payload, dict) and payload.get("format") == CODEC_FORMAT:
        full = payload.get("state_dict")
        if not isinstance(full, dict):
            raise ModelFileError(f"{p}: codec file without a state dict")
        state = {k: v for k, v in full.items() if group_of(k) in ADAPTABLE_GROUPS and k in
                 dict(base.named_parameters())}
        recorded_base = (payload.get("meta") or {}).get("base_id")
        info.update(kind="codec file")
    elif isinstance(payload, dict):
        state = payload.get("state", payload)
        info.update(kind="state dict")
    else:
        state = None
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ModelFileError(f"{p} holds no parameter subset (expected a federation checkpoint, a codec file or a "
                             "state dict of policy/adapter tensors)")
    if recorded_base is not None and recorded_base != base_hash:
        raise ModelMismatchError(f"{p} was adapted from base codec {str(recorded_base)[:16]}..., but the given "
                                 f"model's base is {base_hash[:16]}...; export it with the codec it was made for")
    groups = tuple(g for g in ADAPTABLE_GROUPS if any(group_of(k) == g for k in state))
    other = sorted({group_of(k) for k in state} - set(ADAPTABLE_GROUPS))
    if other or not groups:
        raise ModelFileError(f"{p}: expected only adaptable parameters ({', '.join(ADAPTABLE_GROUPS)}), got "
                             f"groups {sorted({group_of(k) for k in state})}")
    info["groups"] = list(groups)
    return state, groups, info


def merge_subset(base: SemanticCodec, state: dict[str, torch.Tensor], groups: tuple[str, ...]) -> SemanticCodec:
    """Load ``state`` into ``base`` (validated: keys, shapes, finite values) and rebuild the entropy tables."""
    base.load_group_state_dict(state, groups)
    base.update(force=True)
    return base.eval()
