#!/usr/bin/env python
"""Issue 9, fourth round: as train_lean_range_task.py (the default continued 8,000 steps, task loss on every
crop through the inverse window, lambda_d 5e-4, peak lr 1e-4, seed 0) with a fifth of each batch re-windowed
instead of half. Why: the dose of the range fix against the phantom hospitals' low end, now with the task loss
on the re-windowed crops (without it, a fifth gave hospital 1 -20.3 %, half -12.4 %; with it, half gave -22.0 %).
    nice python training/train_lean_range_task_low.py [MAX_MINUTES]   # first call starts, later calls resume
"""

from continue_lean import continue_lean

from fedcodec.pretrain import Stage

continue_lean("lean_range_task_low", steps=8000, warmup_steps=200, intensity_windows=0.2, window_task=True,
              stages=[Stage("range continuation, a fifth re-windowed, task on every crop", 1.0, 5e-4, 1.0, 1e-4)],
              val_every=1000)
