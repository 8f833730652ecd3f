"""Where tensors live: one ``device`` notion for the library, the CLI (``--device``) and the Flower apps.

``auto`` means CUDA when a GPU is present, else the CPU. Training and the transforms run on the chosen
device; entropy coding (CompressAI's rANS) always works on host memory, and the values that select its
tables are computed in float64 (see :meth:`fedcodec.codec.SemanticCodec.gains`), so a bitstream encoded on a
GPU decodes on a CPU and the reverse. Everything runs, and is tested, on the CPU.
"""

from __future__ import annotations

import torch

from fedcodec.errors import DataError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto``/None -> CUDA when available, else CPU; ``cuda`` (or ``cuda:N``) without a GPU is a clear error."""
    name = "auto" if device is None else str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise DataError(f"unknown device {name!r}; use auto, cpu or cuda") from None
    if dev.type not in ("cpu", "cuda"):
        raise DataError(f"unsupported device {name!r}; use auto, cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"device {name!r} was asked for but no CUDA GPU is available (use auto or cpu)")
    return dev


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for a module with neither)."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")
