#!/usr/bin/env python
"""Issue 9, fourth round: the third round's codec (``training/lean_range_task/codec.pt``: window_task, half of
each batch re-windowed) continued 8,000 more steps with a fifth of each batch re-windowed (task loss on every
crop, lambda_d 5e-4, peak lr 1e-4, seed 0). Why: the third round fixed fidelity and real CT (+809 % -> +75 %)
and was still improving at its end, but lost hospital 1's low end (-36.9 % -> -22.0 %); a lower dose of
re-windowed crops on top of it tests whether the phantom hospitals' curve comes back while the range stays.
    nice python training/train_lean_range_task_anneal.py [MAX_MINUTES]   # first call starts, later calls resume
"""

from continue_lean import continue_lean

from fedcodec.pretrain import Stage

continue_lean("lean_range_task_anneal", init="lean_range_task/codec.pt", steps=8000, warmup_steps=200,
              intensity_windows=0.2, window_task=True,
              stages=[Stage("range continuation, a fifth re-windowed, task on every crop", 1.0, 5e-4, 1.0, 1e-4)],
              val_every=1000)
