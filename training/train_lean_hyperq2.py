#!/usr/bin/env python
"""Issue 9, ninth round (a): the eighth round's end (``training/lean_long_hyperq/codec.pt``) continued 6,000 more
steps exactly as it was trained (hyper-latent bits 8/4/2x at qualities 1-3, a tenth re-windowed, task loss on
every crop, lambda_d 5e-4, peak lr 5e-5, 200-step warm-up, cosine decay, seed 0). Why: in the eighth round both
more steps (the control, h0 +17.9 -> +14.3 %) and the per-quality weights (-> +11.8 %, h1 -27.6 -> -30.2 %)
moved the held-out curve; this tests whether more of it keeps doing so. Its sibling with heavier weights is
``train_lean_hyperq_heavy.py``.
    nice python training/train_lean_hyperq2.py [MAX_MINUTES]   # first call starts, later calls resume
"""

from continue_lean import continue_lean

from fedcodec.pretrain import Stage

continue_lean("lean_hyperq2", init="lean_long_hyperq/codec.pt", steps=6000, warmup_steps=200,
              intensity_windows=0.1, window_task=True, hyper_rate_weight=[8.0, 4.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0],
              stages=[Stage("hyper-latent 8/4/2x at qualities 1-3, a tenth re-windowed, task on every crop",
                            1.0, 5e-4, 1.0, 5e-5)],
              val_every=2000)
