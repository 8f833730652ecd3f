#!/usr/bin/env python
"""Issue 9, tenth round (an experiment, not shipped): the embedded default of 2026-11-28
(``training/lean_hyperq2/codec.pt``) continued 6,000 steps with half of the phantoms in the source domain
(``source_share`` 0.5 instead of the recipe's 0.25), else as it was trained (hyper-latent bits 8/4/2x at
qualities 1-3, a tenth re-windowed, task loss on every crop, lambda_d 5e-4, peak lr 5e-5, 200-step warm-up,
cosine decay, seed 0). Why: hospital 0 (the source domain, held out) is the phantom set still behind x265
(+10.2 %); this asks whether the share of source-domain phantoms is what holds it back, and at what cost to the
shifted hospitals.
    nice python training/train_lean_source.py [MAX_MINUTES]   # first call starts, later calls resume
"""

from continue_lean import continue_lean

from fedcodec.pretrain import Stage

continue_lean("lean_source", init="lean_hyperq2/codec.pt", steps=6000, warmup_steps=200, source_share=0.5,
              intensity_windows=0.1, window_task=True, hyper_rate_weight=[8.0, 4.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0],
              stages=[Stage("half source domain, hyper-latent 8/4/2x, a tenth re-windowed, task on every crop",
                            1.0, 5e-4, 1.0, 5e-5)],
              val_every=2000)
