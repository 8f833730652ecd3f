#!/usr/bin/env python
"""Next step for issue 9 (fidelity on real CT/MR, hospital 0): continue the lean default
(training/lean/best.pt) with half of each batch re-windowed to the whole [0, 1] range, resumable in chunks.

Why: the default decodes brain MR's bright tissue (0.6-0.93) at about 0.45 and its black background at 0.03;
phantoms never leave about 0.3-0.9 of the range. ``intensity_windows`` = 0.5: half of the crops go through a
random window and gamma (``fedcodec.training_data.random_intensity_windows``) and train rate + distortion
only. Otherwise the default's recipe (lean_config: 384 randomised phantoms seed 0, quality weights 0.04-32,
the three ensemble segmenters of training/lean, copied here), one stage at twice the default's lambda_d (1e-3, as train_lean_fidelity.py), peak
lr 1e-4 with a 200-step warm-up and cosine decay over 8,000 steps, validation every 1,000 steps (best.pt).
    nice python training/train_lean_range.py [MAX_MINUTES]     # first call starts, later calls resume
"""

from continue_lean import continue_lean

from fedcodec.pretrain import Stage

continue_lean("lean_range_fid", steps=8000, warmup_steps=200, intensity_windows=0.5,
              stages=[Stage("range + fidelity continuation", 1.0, 1e-3, 1.0, 1e-4)], val_every=1000)
