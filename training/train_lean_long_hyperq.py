#!/usr/bin/env python
"""Issue 9, eighth round (a): the seventh round's end (``training/lean_long/codec.pt``, the next candidate)
continued 6,000 steps at peak lr 5e-5 (a tenth re-windowed, task loss on every crop, lambda_d 5e-4, 200-step
warm-up, cosine decay, seed 0) with the hyper-latent's bits weighted per quality: 8x at quality 1, 4x at 2,
2x at 3, 1x above (``hyper_rate_weight``). Why: the side information is 27-30 % of a quality-1 file (target
<= 25 %) and only at the lowest qualities a large share; a flat 3x (sixth round) cut it 38 -> 33 B only.
Its control, the same continuation without the weights, is ``train_lean_long_polish.py``.
    nice python training/train_lean_long_hyperq.py [MAX_MINUTES]   # first call starts, later calls resume
"""

from continue_lean import continue_lean

from fedcodec.pretrain import Stage

continue_lean("lean_long_hyperq", init="lean_long/codec.pt", steps=6000, warmup_steps=200,
              intensity_windows=0.1, window_task=True, hyper_rate_weight=[8.0, 4.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0],
              stages=[Stage("hyper-latent 8/4/2x at qualities 1-3, a tenth re-windowed, task on every crop",
                            1.0, 5e-4, 1.0, 5e-5)],
              val_every=2000)
