"""Continue the lean default (``training/lean/best.pt``) or another codec file of ``training/`` in a run
folder of its own, resumable in chunks.

Shared by the continuation scripts beside it (``train_lean_ct.py``, ``train_lean_fidelity.py``): the three
ensemble segmenters and the cached x265 validation points of ``training/lean`` are copied into the run folder
first, so they are reused rather than retrained; the first call starts the run, later calls resume it exactly.
"""
from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path
from typing import Any

from fedcodec.pretrain import lean_config, pretrain

HERE = Path(__file__).parent


def continue_lean(name: str, init: str = "lean/best.pt", **overrides: Any) -> None:
    """Run one chunk of ``training/<name>`` (minutes from ``sys.argv[1]``, 0 = to the end): ``lean_config``
    with ``init`` = the codec file ``training/<init>`` (the default unless said) and ``overrides``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    out = HERE / name
    minutes = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0
    out.mkdir(exist_ok=True)
    for f in ("task_0.pt", "task_1.pt", "task_2.pt", "val_anchors.json"):
        if not (out / f).exists():
            shutil.copy(HERE / "lean" / f, out / f)
    config = lean_config(init=str(HERE / init), checkpoint_every=250, **overrides)
    resume = (out / "checkpoint.pt").exists()
    pretrain(None if resume else config, out, resume=resume, max_minutes=minutes, device="auto")
