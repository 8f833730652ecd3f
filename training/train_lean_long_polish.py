#!/usr/bin/env python
"""Issue 9, eighth round (b): the seventh round's end (``training/lean_long/codec.pt``, the next candidate)
continued 6,000 steps at peak lr 5e-5 (a tenth re-windowed, task loss on every crop, lambda_d 5e-4, 200-step
warm-up, cosine decay, seed 0). The control of ``train_lean_long_hyperq.py`` (the same with per-quality
hyper-latent weights), and a test of whether a lower-rate polish keeps moving hospital 0 as the seventh round
did.
    nice python training/train_lean_long_polish.py [MAX_MINUTES]   # first call starts, later calls resume
"""

from continue_lean import continue_lean

from fedcodec.pretrain import Stage

continue_lean("lean_long_polish", init="lean_long/codec.pt", steps=6000, warmup_steps=200,
              intensity_windows=0.1, window_task=True,
              stages=[Stage("polish, a tenth re-windowed, task on every crop", 1.0, 5e-4, 1.0, 5e-5)],
              val_every=2000)
