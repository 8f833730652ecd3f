#!/usr/bin/env python
"""Issue 9, ninth round (b): the eighth round's end (``training/lean_long_hyperq/codec.pt``) continued 6,000 more
steps with heavier per-quality hyper-latent weights, 16/8/4/2x at qualities 1-4 (else as ``train_lean_hyperq2.py``:
a tenth re-windowed, task loss on every crop, lambda_d 5e-4, peak lr 5e-5, 200-step warm-up, cosine decay, seed
0). Why: 8/4/2x cut the quality-1 side information 37 -> 29 B on hospital 0 and moved every phantom set; this
tests whether more weight keeps paying.
    nice python training/train_lean_hyperq_heavy.py [MAX_MINUTES]   # first call starts, later calls resume
"""

from continue_lean import continue_lean

from fedcodec.pretrain import Stage

continue_lean("lean_hyperq_heavy", init="lean_long_hyperq/codec.pt", steps=6000, warmup_steps=200,
              intensity_windows=0.1, window_task=True, hyper_rate_weight=[16.0, 8.0, 4.0, 2.0, 1.0, 1.0, 1.0, 1.0],
              stages=[Stage("hyper-latent 16/8/4/2x at qualities 1-4, a tenth re-windowed, task on every crop",
                            1.0, 5e-4, 1.0, 5e-5)],
              val_every=2000)
