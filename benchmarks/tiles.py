"""Large images by tiles: peak memory and time to encode and decode 16-bit images of 2048x2048 and 4096x4096.

Each measurement runs in a fresh subprocess (peak resident memory = ``ru_maxrss`` of that process, which
includes Python, torch and the codec, about 0.4-0.5 GiB before any image). The image is a smooth 16-bit
phantom-like field with noise. Target (issue 11): peak memory under 2 GiB at 4096x4096.

    python benchmarks/tiles.py [--sizes 2048,4096] [--model codec.pt] [--out benchmarks/results/tiles.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time, warnings
warnings.filterwarnings("ignore")
import numpy as np, torch
sys.path.insert(0, sys.argv[4])
from fedcodec.coding import decode_image, encode_image
from fedcodec.model_io import load_codec
size, what, model = int(sys.argv[1]), sys.argv[2], sys.argv[3] or None
codec = load_codec(model)
rng = np.random.default_rng(0)
yy, xx = np.mgrid[:size, :size].astype(np.float32)
img = np.clip(30000 + 12000 * np.sin(xx / 97) * np.cos(yy / 61) + rng.normal(0, 400, (size, size)), 0, 65535)
img = img.astype(np.uint16); del yy, xx
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if what == "decode":
    data = encode_image(codec, img, 3).data
    del img
    t0 = time.perf_counter(); out, header = decode_image(codec, data); sec = time.perf_counter() - t0
    n = len(data)
else:
    t0 = time.perf_counter(); enc = encode_image(codec, img, 3); sec = time.perf_counter() - t0
    n = len(enc.data); header = enc.header
print(json.dumps({"size": size, "what": what, "seconds": round(sec, 2), "bytes": n, "tiles": len(header.tile_boxes()),
                  "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                  "rss_before_mib": round(base / 1024)}))
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="2048,4096")
    p.add_argument("--model", default="")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "tiles.json"))
    args = p.parse_args(argv)
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        for what in ("encode", "decode"):
            proc = subprocess.run([sys.executable, "-c", CHILD, str(size), what, args.model, str(ROOT)],
                                  capture_output=True, text=True)
            if proc.returncode:
                print(proc.stderr[-2000:], file=sys.stderr)
                return 1
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{size}x{size} 16-bit {what}: {r['seconds']:.1f} s, peak RSS {r['peak_rss_mib']} MiB "
                  f"({r['tiles']} tiles, {r['bytes']} bytes)", flush=True)
    result = {"machine": platform.processor() or platform.machine(), "python": platform.python_version(),
              "model": args.model or "embedded default", "rows": rows,
              "note": "peak RSS of a fresh process (includes about 0.4-0.5 GiB of Python/torch/codec); in the "
                      "decode rows it also covers the encode that made the bitstream"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
