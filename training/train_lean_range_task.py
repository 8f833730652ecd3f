#!/usr/bin/env python
"""Issue 9, third round of the range continuation: as train_lean_range.py (the default continued 8,000 steps,
half of each batch re-windowed to the whole [0, 1] range, lambda_d 5e-4, peak lr 1e-4) but with the task loss on
the re-windowed crops too (``window_task``): the ensemble segmenters read their reconstructions through the
inverse window (``fedcodec.training_data.undo_intensity_windows``). Why: with rate + distortion only on them,
every range variant fixed fidelity but lost the phantom hospitals' low end (hospital 1 -36.9 % -> -12.4 to
-20.3 %): half of each batch stopped pulling towards the task.
    nice python training/train_lean_range_task.py [MAX_MINUTES]     # first call starts, later calls resume
"""

from continue_lean import continue_lean

from fedcodec.pretrain import Stage

continue_lean("lean_range_task", steps=8000, warmup_steps=200, intensity_windows=0.5, window_task=True,
              stages=[Stage("range continuation, task on every crop", 1.0, 5e-4, 1.0, 1e-4)], val_every=1000)
