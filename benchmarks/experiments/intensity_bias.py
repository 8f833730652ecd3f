"""Where a codec's squared error comes from: PSNR and mean signed error (brightness bias) per held-out set.

Issue 9's range finding: the embedded default brightens every image by 0.011-0.016 (up to 39 % of its squared
error on the unseen hospital at quality 8) and decodes brain MR's bright tissue (0.6-0.93) at about 0.45.
Forward pass (``codec(x, quality)``, no entropy coding), the first 8 held-out images of heldout.py's phantom
and MR sets and 4 of its CT set, qualities 1, 4 and 8; prints one line per set and writes JSON.

    python benchmarks/experiments/intensity_bias.py [--model FILE] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import heldout  # noqa: E402

from fedcodec.codec import pad_to_multiple  # noqa: E402
from fedcodec.data import normalize  # noqa: E402
from fedcodec.model_io import load_codec  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="codec file (default: the embedded default)")
    p.add_argument("--out", default=None, help="JSON file for the figures")
    args = p.parse_args()
    codec = load_codec(args.model).eval()
    sets = {name: heldout._phantom_set(name, 8, 1)[2] for name in ("h0", "h1", "unseen")}
    for name, loader, n in (("mr", heldout._mr_set, 8), ("ct", heldout._ct_set, 4)):
        data = loader(n)
        if data is not None:      # real sets need `fedcodec datasets fetch`
            sets[name] = data[2]
    result = {}
    for name, samples in sets.items():
        rows = []
        for q in (0, 3, 7):
            bias, mse = [], []
            for s in samples:
                x = torch.from_numpy(normalize(s.image, s.window).astype(np.float32))[None, None]
                with torch.no_grad():
                    x_hat = codec(pad_to_multiple(x)[0], quality=q)["x_hat"][..., :x.shape[-2], :x.shape[-1]]
                err = x_hat.clamp(0, 1) - x
                bias.append(err.mean().item())
                mse.append(err.pow(2).mean().item())
            b, m = float(np.mean(bias)), float(np.mean(mse))
            rows.append({"quality": q + 1, "psnr": 10 * np.log10(1 / m), "bias": b, "bias_share_of_mse": b * b / m})
        result[name] = rows
        print(name, " | ".join(f"q{r['quality']} PSNR {r['psnr']:.2f} bias {r['bias']:+.4f} "
                               f"({100 * r['bias_share_of_mse']:.0f} % of MSE)" for r in rows))
    if args.out:
        Path(args.out).write_text(json.dumps({"model": args.model or "embedded default", "sets": result}, indent=1))


if __name__ == "__main__":
    main()
