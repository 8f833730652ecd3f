#!/usr/bin/env python
"""Issue 9, second round of the range continuation: as train_lean_range.py (the default continued 8,000 steps,
half of each batch re-windowed to the whole [0, 1] range, rate + distortion only on those), but the
re-windowed crops are coded at qualities 5-8 only (``intensity_windows_quality`` 4, 0-based), so the low
qualities keep the default's semantic objective alone. Why: train_lean_range.py fixed the range (PSNR BD-rate
vs x265 on hospital 0 +467 % -> +164 %, CT Dice +809 % -> +259 %) but its low qualities lost the bit
allocation that wins on the phantom hospitals (hospital 1 -36.9 % -> -12.4 %).
    nice python training/train_lean_range_top.py [MAX_MINUTES]     # first call starts, later calls resume
"""

from continue_lean import continue_lean

from fedcodec.pretrain import Stage

continue_lean("lean_range_top", steps=8000, warmup_steps=200, intensity_windows=0.5, intensity_windows_quality=4,
              stages=[Stage("range continuation, top qualities", 1.0, 5e-4, 1.0, 1e-4)], val_every=1000)
