#!/usr/bin/env python
"""Issue 9, fifth round: the fourth round's pick (``training/lean_range_task_anneal/best.pt``, step 7,000)
continued 4,000 steps with a tenth of each batch re-windowed (task loss on every crop), peak lr 5e-5, seed 0.
Why: every range round kept hospital 1 near -25 % on the steering validation while hospital 0 went from +44 % to
+9 %; a short, gentle polish with fewer re-windowed crops tests whether hospital 1 comes back towards the
default's -49 % without giving up the range.
    nice python training/train_lean_range_task_polish.py [MAX_MINUTES]   # first call starts, later calls resume
"""

from continue_lean import continue_lean

from fedcodec.pretrain import Stage

continue_lean("lean_range_task_polish", init="lean_range_task_anneal/best.pt", steps=4000, warmup_steps=100,
              intensity_windows=0.1, window_task=True,
              stages=[Stage("polish, a tenth re-windowed, task on every crop", 1.0, 5e-4, 1.0, 5e-5)],
              val_every=1000)
