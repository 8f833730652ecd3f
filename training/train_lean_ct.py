#!/usr/bin/env python
"""Ablation of issue 9, "real data": the lean default (training/lean/best.pt) fine-tuned 2,000 steps with the
real CT/MR training volumes of `fedcodec datasets fetch totalsegmentator` mixed into its phantom pool.

Same recipe otherwise (lean_config: randomised phantoms seed 0, quality weights 0.04-32, the three ensemble
segmenters of training/lean, copied here so they are not retrained; they saw phantoms only), one semantic
stage at lambda_d 5e-4 and peak lr 1e-4 with a 100-step warm-up. Resumable like every pretraining run:
    nice python training/train_lean_ct.py [MAX_MINUTES]
"""

from continue_lean import continue_lean

from fedcodec.data.datasets import cache_root
from fedcodec.pretrain import Stage

continue_lean("lean_ct", data=[str(cache_root() / "totalsegmentator" / "train")], steps=2000, warmup_steps=100,
              stages=[Stage("real-data fine-tune", 1.0, 5e-4, 1.0, 1e-4)], val_every=1000)
