#!/usr/bin/env python
"""Issue 9, sixth round: the embedded default of 2026-11-27 evening (``training/lean_range_task_polish/best.pt``)
continued 4,000 steps as its polish was (a tenth of each batch re-windowed, task loss on every crop, lambda_d
5e-4, peak lr 5e-5, seed 0) with the hyper-latent's bits weighted 3x in the rate term (``hyper_rate_weight``).
Why: the range rounds doubled the side information at the low qualities (hyper-latent 38 of 134 B at quality 1
on hospital 0, 28 %; the lean default 17 of 140 B), and the held-out scoreboard's side-information
counterfactual says the default's own files with the lean default's hyper-latent bytes would read hospital 1
-31.4 % instead of -25.2 % and hospital 0 +12.9 % instead of +22.2 %.
    nice python training/train_lean_hyper.py [MAX_MINUTES]   # first call starts, later calls resume
"""

from continue_lean import continue_lean

from fedcodec.pretrain import Stage

continue_lean("lean_hyper", init="lean_range_task_polish/best.pt", steps=4000, warmup_steps=100,
              intensity_windows=0.1, window_task=True, hyper_rate_weight=3.0,
              stages=[Stage("hyper-latent at 3x, a tenth re-windowed, task on every crop", 1.0, 5e-4, 1.0, 5e-5)],
              val_every=1000)
