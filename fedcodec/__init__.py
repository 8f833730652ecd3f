"""fedcodec: diagnosis-oriented learned medical image compression with federated few-shot adaptation.

The Python API mirrors the command line::

    from fedcodec import load_codec, load_task, encode_image, decode_image, adapt, AdaptConfig
    codec, task = load_codec(), load_task()            # the embedded default
    enc = encode_image(codec, image_uint8, quality=3)  # real bytes (enc.data, enc.bpp)
    image, header = decode_image(codec, enc.data)
    alloc = bit_allocation(codec, enc.data)            # bits per 16x16 block, policy gain map

Nothing here imports Flower: federation lives in the top-level ``server``, ``clients`` and ``strategies``
packages, which call into this library. Names are imported lazily so that ``import fedcodec`` (and the CLI's
start-up) does not pay for torch, CompressAI and MONAI until they are needed.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "AdaptConfig": "fedcodec.adapt", "AdaptResult": "fedcodec.adapt", "DPConfig": "fedcodec.adapt",
    "adapt": "fedcodec.adapt", "SemanticCodec": "fedcodec.codec", "decode_image": "fedcodec.coding",
    "encode_image": "fedcodec.coding", "Sample": "fedcodec.data", "load_folder": "fedcodec.data",
    "load_samples": "fedcodec.data", "make_phantoms": "fedcodec.data", "FedcodecError": "fedcodec.errors",
    "evaluate": "fedcodec.evaluate", "write_report": "fedcodec.evaluate", "load_codec": "fedcodec.model_io",
    "load_task": "fedcodec.model_io", "save_codec": "fedcodec.model_io", "bit_allocation": "fedcodec.allocation",
    "BitAllocation": "fedcodec.allocation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fedcodec' has no attribute {name!r}")
