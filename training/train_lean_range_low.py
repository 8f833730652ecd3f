#!/usr/bin/env python
"""Issue 9, second round of the range continuation: as train_lean_range.py (the default continued 8,000 steps,
re-windowed crops trained on rate + distortion only) with a fifth of each batch re-windowed instead of half
(``intensity_windows`` 0.2): the dose of the range fix against the semantic objective. Why: with half,
the range was fixed (CT Dice BD-rate +809 % -> +259 %) but hospital 1 went -36.9 % -> -12.4 %.
    nice python training/train_lean_range_low.py [MAX_MINUTES]     # first call starts, later calls resume
"""

from continue_lean import continue_lean

from fedcodec.pretrain import Stage

continue_lean("lean_range_low", steps=8000, warmup_steps=200, intensity_windows=0.2,
              stages=[Stage("range continuation, a fifth re-windowed", 1.0, 5e-4, 1.0, 1e-4)], val_every=1000)
