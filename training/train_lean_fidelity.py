#!/usr/bin/env python
"""Next step for issue 9 (hospital 0 and fidelity targets missed): continue the lean default
(training/lean/best.pt) with twice the distortion weight, resumable in chunks.

Same recipe otherwise (lean_config: 384 randomised phantoms seed 0, quality weights 0.04-32, the three ensemble
segmenters of training/lean, copied here so they are not retrained), one semantic stage at lambda_d 1e-3, peak
lr 1e-4 with a 200-step warm-up and cosine decay over 10,000 steps, validation every 1,000 steps (best.pt).
    nice python training/train_lean_fidelity.py [MAX_MINUTES]     # first call starts, later calls resume
"""

from continue_lean import continue_lean

from fedcodec.pretrain import Stage

continue_lean("lean_fidelity", steps=10000, warmup_steps=200,
              stages=[Stage("fidelity continuation", 1.0, 1e-3, 1.0, 1e-4)], val_every=1000)
