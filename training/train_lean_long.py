#!/usr/bin/env python
"""Issue 9, seventh round: the embedded default of 2026-11-27 evening (``training/lean_range_task_polish/best.pt``)
continued 8,000 more steps, a tenth of each batch re-windowed with the task loss on every crop, lambda_d 5e-4,
peak lr 1e-4 (200-step warm-up, cosine decay), seed 0. Why: of the full-range rounds, the long annealed one
(8,000 steps at a fifth) moved hospital 0 and the unseen hospital most (+36.7 -> +22.5 %, K=1 -1.7 -> -10.8 %);
this tests whether more of the same schedule keeps moving them.
    nice python training/train_lean_long.py [MAX_MINUTES]   # first call starts, later calls resume
"""

from continue_lean import continue_lean

from fedcodec.pretrain import Stage

continue_lean("lean_long", init="lean_range_task_polish/best.pt", steps=8000, warmup_steps=200,
              intensity_windows=0.1, window_task=True,
              stages=[Stage("long continuation, a tenth re-windowed, task on every crop", 1.0, 5e-4, 1.0, 1e-4)],
              val_every=1000)
