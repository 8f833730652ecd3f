#!/usr/bin/env python
"""Fuzz fedcodec's decoder with forged bitstreams; count crashes, hangs and wrong error types.

Every input is a real container (a random small image encoded with the codec) that is then forged:

- ``payload``: the entropy-coded strings replaced by random bytes of random length, CRC recomputed;
- ``bitflip``: 1 to 8 random bits of the payload flipped, CRC recomputed;
- ``truncate``: cut at a random length (with and without a recomputed CRC);
- ``header``: a header field rewritten (size up to 2**35, flags, quality, window, tile size, lengths), CRC
  recomputed;
- ``tiles``: a tiled container with forged tile lengths or random tile payloads, CRC recomputed.

Each input is decoded in a fork of this (loaded) process, the setting in which CompressAI's rANS decoder
crashed most often before fedcodec isolated it (``--no-fork`` decodes in-process instead). Outcomes:
``error`` (a BitstreamError: the right answer), ``decoded`` (accepted: fine for header edits that keep the
stream valid, e.g. a window), ``other`` (any other exception: a bug), ``crash`` (the child died on a signal)
and ``hang`` (over ``--timeout`` seconds). Exit status 1 if any crash, hang or ``other`` occurred.

    python scripts/fuzz_bitstreams.py --n 10000 --json fuzz.json            # the embedded default codec
    python scripts/fuzz_bitstreams.py --model tiny.pt --n 300 --seed 1      # what the CI test runs
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import struct
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedcodec.bitstream import _varint  # noqa: E402  (the container's own varint)

KINDS = ("payload", "bitflip", "truncate", "header", "tiles")


def _recrc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def _header_len(data: bytes) -> int:
    """Offset of the first entropy-coded byte of an untiled (version 3) container."""
    from fedcodec.bitstream import unpack

    _, strings = unpack(data)
    return len(data) - 4 - sum(map(len, strings))


def forge(rng: np.random.Generator, samples: list[bytes], tiled: list[bytes]) -> tuple[str, bytes]:
    """One forged container."""
    kind = KINDS[int(rng.integers(len(KINDS)))]
    data = samples[int(rng.integers(len(samples)))]
    body = data[:-4]
    if kind == "payload":
        hl = _header_len(data)
        kept = int(rng.integers(0, len(body) - hl + 1)) if rng.random() < 0.5 else 0   # a valid start, or none
        return kind, _recrc(body[:hl + kept] + rng.bytes(int(rng.integers(1, 2400))))
    if kind == "bitflip":
        hl = _header_len(data)
        b = bytearray(body)
        for _ in range(int(rng.integers(1, 9))):
            pos = int(rng.integers(hl, len(b)))
            b[pos] ^= 1 << int(rng.integers(8))
        return kind, _recrc(bytes(b))
    if kind == "truncate":
        cut = int(rng.integers(0, len(data)))
        return kind, (_recrc(data[:cut]) if rng.random() < 0.5 and cut > 4 else data[:cut])
    if kind == "header":
        b = bytearray(body)
        field = int(rng.integers(5))
        # version 3: magic 2, version 1, model id 4, flags + quality at 7, packed sides at 8-10 (untiled samples)
        if field == 0:      # size: varint sides (flag bit 3) with random (often huge) values
            new = _varint(int(2 ** rng.uniform(0, 35))) + _varint(int(2 ** rng.uniform(0, 35)))
            b = bytearray(body[:7] + bytes([body[7] | 8]) + new + body[11:])
        elif field == 1:    # flags and quality
            b[7] = int(rng.integers(256))
        elif field == 2:    # any single header byte
            b[int(rng.integers(0, min(len(b), 16)))] = int(rng.integers(256))
        elif field == 3:    # window (set the flag, insert two random floats, NaN and inf included)
            vals = rng.choice([np.nan, np.inf, -np.inf, 0.0, 1.0, 1e30, -5.0, 65535.0], size=2)
            b = bytearray(body[:11] + struct.pack("<ff", *vals) + body[11:])
            b[7] |= 2
        else:               # sides and the stream's first bytes: random bytes there
            for _ in range(3):
                b[int(rng.integers(8, min(len(b), 24)))] = int(rng.integers(256))
        return kind, _recrc(bytes(b))
    # tiles: a tiled container with random tile payloads or a forged tile size
    data = tiled[int(rng.integers(len(tiled)))]
    from fedcodec.bitstream import unpack_tiles
    header, tiles = unpack_tiles(data)
    b = bytearray(data[:-4])
    if rng.random() < 0.5:
        n_tiles = len(tiles)
        k = int(rng.integers(n_tiles))
        (stream,) = tiles[k]
        streams = [t[0] for t in tiles]
        streams[k] = rng.bytes(int(rng.integers(1, 2 * len(stream) + 2)))
        from fedcodec.bitstream import pack_tiles
        return kind, pack_tiles(header, streams)
    pos = int(rng.integers(7, len(b)))
    b[pos] = int(rng.integers(256))
    return kind, _recrc(bytes(b))


def _decode_outcome(codec, data: bytes) -> str:
    from fedcodec.coding import decode_image
    from fedcodec.errors import BitstreamError

    try:
        decode_image(codec, data)
    except BitstreamError:
        return "error"
    except Exception as exc:  # noqa: BLE001 - anything else is a finding
        sys.stderr.write(f"other exception: {type(exc).__name__}: {exc}\n")
        return "other"
    return "decoded"


_CODES = {0: "error", 3: "decoded", 4: "other"}


def run_one(codec, data: bytes, use_fork: bool, timeout: float) -> tuple[str, float]:
    t0 = time.perf_counter()
    if not use_fork:
        return _decode_outcome(codec, data), time.perf_counter() - t0
    pid = os.fork()
    if pid == 0:  # child
        try:
            outcome = _decode_outcome(codec, data)
            code = {"error": 0, "decoded": 3, "other": 4}[outcome]
        except BaseException:  # noqa: BLE001
            code = 4
        os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "hang", time.perf_counter() - t0
        time.sleep(0.002)
    if os.WIFSIGNALED(status):
        return "crash", time.perf_counter() - t0
    return _CODES.get(os.WEXITSTATUS(status), "other"), time.perf_counter() - t0


def fuzz(model: str | None, n: int, seed: int, use_fork: bool = True, timeout: float = 30.0,
         log_every: int = 0) -> dict:
    import torch

    from fedcodec.coding import encode_image
    from fedcodec.model_io import load_codec

    torch.set_num_threads(1)  # forked children must not inherit a busy OpenMP pool
    codec = load_codec(model)
    rng = np.random.default_rng(seed)
    samples, tiled = [], []
    for i in range(6):
        h, w = int(rng.integers(16, 200)), int(rng.integers(16, 200))
        img = (rng.random((h, w)) * (255 if i % 2 else 65535)).astype(np.uint8 if i % 2 else np.uint16)
        samples.append(encode_image(codec, img, int(rng.integers(codec.num_qualities))).data)
    for _ in range(2):
        img = (rng.random((150, 140)) * 255).astype(np.uint8)
        tiled.append(encode_image(codec, img, int(rng.integers(codec.num_qualities)), tile=64).data)
    from fedcodec import rans_guard

    rans_guard.ensure_started()   # forked children share this helper
    counts: Counter = Counter()
    by_kind: dict[str, Counter] = {k: Counter() for k in KINDS}
    slowest = 0.0
    t0 = time.perf_counter()
    for i in range(n):
        kind, data = forge(rng, samples, tiled)
        outcome, seconds = run_one(codec, data, use_fork, timeout)
        if use_fork and outcome in ("crash", "hang", "other"):
            rans_guard.shutdown()       # a child killed mid-request leaves the helper's pipes mid-message
        if use_fork:
            rans_guard.ensure_started()
        slowest = max(slowest, seconds)
        counts[outcome] += 1
        by_kind[kind][outcome] += 1
        if outcome in ("crash", "hang", "other"):
            sys.stderr.write(f"input {i} ({kind}): {outcome}: {data.hex()}\n")
        if log_every and (i + 1) % log_every == 0:
            print(f"{i + 1}/{n}: {dict(counts)} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return {"n": n, "seed": seed, "fork": use_fork, "model": model or "embedded default",
            "outcomes": dict(counts), "by_kind": {k: dict(v) for k, v in by_kind.items()},
            "crashes": counts["crash"], "hangs": counts["hang"], "other_exceptions": counts["other"],
            "slowest_input_s": round(slowest, 3), "seconds": round(time.perf_counter() - t0, 1),
            "isolated_decoder_crashes": rans_guard.stats["crashed"] if not use_fork else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="codec file (default: the embedded default)")
    p.add_argument("--n", type=int, default=10000, help="number of forged inputs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-fork", action="store_true", help="decode in this process instead of a fork per input")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds after which an input counts as a hang")
    p.add_argument("--json", default=None, help="write the counts here")
    args = p.parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore")
    result = fuzz(args.model, args.n, args.seed, use_fork=not args.no_fork, timeout=args.timeout,
                  log_every=max(1, args.n // 20))
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 1 if result["crashes"] or result["hangs"] or result["other_exceptions"] else 0


if __name__ == "__main__":
    sys.exit(main())
