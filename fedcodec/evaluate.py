"""Rate-task evaluation: bpp from real bytes against the Dice of the same frozen task network.

For every image and every quality the codec writes a real bitstream (header included), decodes it to pixels
of the original bit depth, and the frozen task network segments the decoded image. Anchor codecs (real
x265, OpenJPEG, ... encoders from :mod:`fedcodec.anchors`) go through exactly the same path, so every curve
is measured the same way. Metrics are averaged per quality over images before any BD-rate fit.

Outputs of :func:`write_report`: ``results.json`` (schema below), ``report.md`` (tables), ``rate_dice.png``.

```
{"codecs": {"<name>": {"kind": "learned"|"anchor", "points": [{"quality", "bpp", "dice", "psnr", "ms_ssim",
                        "encode_ms", "decode_ms"}], "bd_rate_vs_hevc": %, "bd_rate_psnr_vs_hevc": %}},
 "uncompressed_dice": float, "num_images": int, ...}
```
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fedcodec.codec import SemanticCodec, pad_to_multiple
from fedcodec.coding import decode_image, encode_image
from fedcodec.data import Sample, normalize
from fedcodec.errors import DataError, FedcodecError

log = logging.getLogger(__name__)

BD_REFERENCE = "hevc"


def _segment(task_net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Binary foreground ``(H, W)`` of the task network on ``x`` ``(1, 1, H, W)`` in [0, 1] (padded internally)."""
    from fedcodec.task_net import foreground_probability

    from fedcodec.device import module_device

    h, w = x.shape[-2:]
    xp, _ = pad_to_multiple(x, 16)
    with torch.no_grad():
        prob = foreground_probability(task_net(xp.to(module_device(task_net))))[0, 0, :h, :w]
    return (prob > 0.5).cpu()


def dice_score(pred: torch.Tensor, mask: np.ndarray) -> float:
    """Dice of a binary prediction against a {0,1} mask (MONAI's ``compute_dice``; 1.0 when both are empty)."""
    from monai.metrics import compute_dice

    p = pred.to(torch.float32)[None, None]
    g = torch.from_numpy(mask.astype(np.float32))[None, None]
    return float(compute_dice(p, g, include_background=True, ignore_empty=False)[0, 0])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two [0, 1] images."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 100.0 if mse == 0 else 10 * math.log10(1.0 / mse)


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float | None:
    """MS-SSIM of two [0, 1] images (pytorch-msssim); None when the image is too small for 5 scales (< 161 px)."""
    if min(a.shape) < 161:
        return None
    from pytorch_msssim import ms_ssim as _ms_ssim

    ta = torch.from_numpy(a.astype(np.float32))[None, None]
    tb = torch.from_numpy(b.astype(np.float32))[None, None]
    return float(_ms_ssim(ta, tb, data_range=1.0))


@dataclass
class PointAccumulator:
    """Sums of per-image metrics at one quality."""

    quality: Any
    bits: float = 0.0
    pixels: int = 0
    dice: float = 0.0
    psnr: float = 0.0
    ms_ssim: float = 0.0
    ms_ssim_n: int = 0
    encode_ms: list | None = None
    decode_ms: list | None = None
    n: int = 0

    def add(self, nbytes: int, pixels: int, dice: float, p: float, m: float | None, enc: float, dec: float) -> None:
        self.bits += 8 * nbytes
        self.pixels += pixels
        self.dice += dice
        self.psnr += p
        if m is not None:
            self.ms_ssim += m
            self.ms_ssim_n += 1
        self.encode_ms = (self.encode_ms or []) + [enc]
        self.decode_ms = (self.decode_ms or []) + [dec]
        self.n += 1

    def point(self) -> dict:
        # bpp is the mean of per-image bpp (equal-size images: identical to total bits / total pixels)
        return {"quality": self.quality, "bpp": self.bits / self.pixels, "dice": self.dice / self.n,
                "psnr": self.psnr / self.n, "ms_ssim": self.ms_ssim / self.ms_ssim_n if self.ms_ssim_n else None,
                "encode_ms": float(np.median(self.encode_ms)), "decode_ms": float(np.median(self.decode_ms))}


def _check_samples(samples: Sequence[Sample]) -> None:
    if not samples:
        raise DataError("no samples to evaluate")
    missing = [s.name for s in samples if s.mask is None]
    if missing:
        raise DataError(f"evaluation needs masks; these samples have none: {missing[:5]}")


def evaluate_codec(codec: SemanticCodec, task_net: torch.nn.Module, samples: Sequence[Sample],
                   qualities: Sequence[int] | None = None,
                   progress: Callable[[str], None] | None = None) -> list[dict]:
    """Rate-task points of a fedcodec codec, one per quality (0-based), lowest rate first."""
    _check_samples(samples)
    qualities = list(range(codec.num_qualities)) if qualities is None else list(qualities)
    acc = {q: PointAccumulator(q + 1) for q in qualities}  # reported qualities are 1-based like the CLI
    codec.eval()
    for i, s in enumerate(samples):
        ref = normalize(s.image, s.window)
        for q in qualities:
            t0 = time.perf_counter()
            enc = encode_image(codec, s.image, q, s.window)
            t1 = time.perf_counter()
            dec, _ = decode_image(codec, enc.data)
            t2 = time.perf_counter()
            x_hat = normalize(dec, s.window)
            with torch.no_grad():
                padded = pad_to_multiple(torch.from_numpy(x_hat)[None, None], 64)[0]
                task_in = codec.task_input(padded.to(codec.log_gain.device))
            pred = _segment(task_net, task_in[..., :x_hat.shape[0], :x_hat.shape[1]])
            acc[q].add(len(enc.data), s.image.size, dice_score(pred, s.mask), psnr(ref, x_hat), ms_ssim(ref, x_hat),
                       1e3 * (t1 - t0), 1e3 * (t2 - t1))
        if progress:
            progress(f"fedcodec: image {i + 1}/{len(samples)}")
    return [acc[q].point() for q in qualities]


def evaluate_anchor(name: str, task_net: torch.nn.Module, samples: Sequence[Sample],
                    qualities: Sequence[Any] | None = None,
                    progress: Callable[[str], None] | None = None) -> list[dict]:
    """Rate-task points of a classic anchor codec over its quality sweep (lowest rate first)."""
    from fedcodec.anchors import get_anchor

    _check_samples(samples)
    anchor = get_anchor(name)
    qualities = list(anchor.qualities if qualities is None else qualities)
    acc = {q: PointAccumulator(q) for q in qualities}
    for i, s in enumerate(samples):
        ref = normalize(s.image, s.window)
        for q in qualities:
            res = anchor.encode_decode(s.image, q)
            x_hat = normalize(res.decoded, s.window)
            pred = _segment(task_net, torch.from_numpy(x_hat)[None, None])
            acc[q].add(len(res.data), s.image.size, dice_score(pred, s.mask), psnr(ref, x_hat), ms_ssim(ref, x_hat),
                       res.encode_ms, res.decode_ms)
        if progress:
            progress(f"{name}: image {i + 1}/{len(samples)}")
    return sorted((acc[q].point() for q in qualities), key=lambda p: p["bpp"])


def uncompressed_dice(task_net: torch.nn.Module, samples: Sequence[Sample]) -> float:
    """Mean Dice of the task network on the original images."""
    _check_samples(samples)
    scores = [dice_score(_segment(task_net, torch.from_numpy(normalize(s.image, s.window))[None, None]), s.mask)
              for s in samples]
    return float(np.mean(scores))


def segmentation_ms(task_net: torch.nn.Module, samples: Sequence[Sample], repeats: int = 3) -> float:
    """Median time in ms of one segmentation of the first sample."""
    x = torch.from_numpy(normalize(samples[0].image, samples[0].window))[None, None]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _segment(task_net, x)
        times.append(1e3 * (time.perf_counter() - t0))
    return float(np.median(times))


def add_bd_rates(results: dict, reference: str = BD_REFERENCE) -> None:
    """Add ``bd_rate_vs_<ref>`` (Dice) and ``bd_rate_psnr_vs_<ref>`` to every codec entry (None + a note when
    the curves do not overlap)."""
    from fedcodec.bdrate import bd_rate

    codecs = results["codecs"]
    if reference not in codecs:
        return
    ref = codecs[reference]["points"]
    for name, entry in codecs.items():
        pts = entry["points"]
        for metric, key in (("dice", f"bd_rate_vs_{reference}"), ("psnr", f"bd_rate_psnr_vs_{reference}")):
            try:
                r = bd_rate([p["bpp"] for p in ref], [p[metric] for p in ref],
                            [p["bpp"] for p in pts], [p[metric] for p in pts])
                entry[key] = r.bd_rate_percent
                entry[key + "_interval"] = list(r.metric_interval)
            except FedcodecError as exc:
                entry[key] = None
                entry[key + "_note"] = str(exc)


def matched_point(points: Sequence[dict], target_dice: float) -> dict | None:
    """The lowest-rate point whose Dice reaches ``target_dice`` (None if none does)."""
    ok = [p for p in points if p["dice"] >= target_dice]
    return min(ok, key=lambda p: p["bpp"]) if ok else None


def latency_table(results: dict, bandwidth_mbps: float, study_images: int, pixels: int,
                  segmentation_ms_value: float, tolerance: float = 0.01) -> dict:
    """Liu et al.'s latency model per codec: transmission + encode + decode + segmentation, per image and per
    study, at the lowest rate whose Dice is within ``tolerance`` of uncompressed (else the best-Dice point)."""
    target = results["uncompressed_dice"] - tolerance
    table = {}
    raw_bits = 8 * pixels  # 8-bit uncompressed reference
    for name, entry in {"uncompressed": None, **results["codecs"]}.items():
        if entry is None:
            p = {"bpp": 8.0, "dice": results["uncompressed_dice"], "encode_ms": 0.0, "decode_ms": 0.0, "quality": None}
        else:
            p = matched_point(entry["points"], target) or max(entry["points"], key=lambda q: q["dice"])
        tx = p["bpp"] * pixels / (bandwidth_mbps * 1e6) * 1e3
        per_image = tx + p["encode_ms"] + p["decode_ms"] + segmentation_ms_value
        table[name] = {"quality": p["quality"], "bpp": p["bpp"], "dice": p["dice"],
                       "meets_target": p["dice"] >= target, "transmission_ms": tx, "encode_ms": p["encode_ms"],
                       "decode_ms": p["decode_ms"], "segmentation_ms": segmentation_ms_value,
                       "per_image_ms": per_image, "per_study_s": per_image * study_images / 1e3,
                       "bits_vs_uncompressed": p["bpp"] * pixels / raw_bits}
    return {"bandwidth_mbps": bandwidth_mbps, "study_images": study_images, "target_dice": target, "codecs": table}


def plot_results(results: dict, path: str | Path) -> None:
    """Dice vs bpp (log axis) for every codec, with the uncompressed Dice as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, entry in results["codecs"].items():
        pts = sorted(entry["points"], key=lambda p: p["bpp"])
        style = "-o" if entry.get("kind") == "learned" else "--s"
        ax.plot([p["bpp"] for p in pts], [p["dice"] for p in pts], style, ms=4, label=name)
    ax.axhline(results["uncompressed_dice"], color="k", ls=":", lw=1, label="uncompressed")
    ax.set_xscale("log")
    ax.set_xlabel("bits per pixel (real bytes, headers included)")
    ax.set_ylabel("Dice of the frozen task network")
    ax.set_title(results.get("title", "rate-task curves"))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def markdown_report(results: dict) -> str:
    """Tables of every codec's points, BD-rates and (when present) the latency model."""
    lines = [f"# {results.get('title', 'Rate-task evaluation')}", "",
             f"{results['num_images']} images; uncompressed Dice {results['uncompressed_dice']:.4f}.", "",
             "| codec | quality | bpp | Dice | PSNR (dB) | MS-SSIM | encode ms | decode ms |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, entry in results["codecs"].items():
        for p in entry["points"]:
            ms = "" if p["ms_ssim"] is None else f"{p['ms_ssim']:.4f}"
            lines.append(f"| {name} | {p['quality']} | {p['bpp']:.4f} | {p['dice']:.4f} | {p['psnr']:.2f} | {ms} "
                         f"| {p['encode_ms']:.1f} | {p['decode_ms']:.1f} |")
    ref = BD_REFERENCE
    if ref in results["codecs"]:
        lines += ["", f"BD-rate against {ref} (negative = fewer bits for the same metric; Akima, after making "
                  "each curve monotonic):", "", "| codec | BD-rate on Dice | Dice interval | BD-rate on PSNR |",
                  "| --- | --- | --- | --- |"]
        for name, entry in results["codecs"].items():
            d, p = entry.get(f"bd_rate_vs_{ref}"), entry.get(f"bd_rate_psnr_vs_{ref}")
            iv = entry.get(f"bd_rate_vs_{ref}_interval")
            lines.append(f"| {name} | {'n/a' if d is None else f'{d:+.1f}%'} | "
                         f"{'no overlap' if iv is None else f'{iv[0]:.3f}-{iv[1]:.3f}'} | "
                         f"{'n/a' if p is None else f'{p:+.1f}%'} |")
    lat = results.get("latency")
    if lat:
        lines += ["", f"Latency model at {lat['bandwidth_mbps']} Mbit/s, {lat['study_images']} images a study, at the "
                  f"lowest rate with Dice >= {lat['target_dice']:.3f} (else the best point):", "",
                  "| codec | bpp | Dice | transmit ms | encode ms | decode ms | segment ms | per image ms | per study s |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, r in lat["codecs"].items():
            flag = "" if r["meets_target"] else " (below target)"
            lines.append(f"| {name} | {r['bpp']:.4f} | {r['dice']:.4f}{flag} | {r['transmission_ms']:.2f} | "
                         f"{r['encode_ms']:.1f} | {r['decode_ms']:.1f} | {r['segmentation_ms']:.1f} | "
                         f"{r['per_image_ms']:.1f} | {r['per_study_s']:.2f} |")
    return "\n".join(lines) + "\n"


def evaluate(codec: SemanticCodec, task_net: torch.nn.Module, samples: Sequence[Sample],
             anchors: Sequence[str] = (), codec_name: str = "fedcodec", extra_codecs: dict | None = None,
             bandwidth_mbps: float | None = None, study_images: int = 100,
             progress: Callable[[str], None] | None = None) -> dict:
    """Full evaluation: the codec, optional anchors and learned variants (``extra_codecs``: name -> codec),
    BD-rates against HEVC when it is among the anchors, and the latency model when a bandwidth is given."""
    results: dict[str, Any] = {"num_images": len(samples), "uncompressed_dice": uncompressed_dice(task_net, samples),
                               "codecs": {}}
    for name, c in {codec_name: codec, **(extra_codecs or {})}.items():
        results["codecs"][name] = {"kind": "learned", "model_id": c.identity_hash()[:12],
                                   "points": evaluate_codec(c, task_net, samples, progress=progress)}
    for name in anchors:
        results["codecs"][name] = {"kind": "anchor", "points": evaluate_anchor(name, task_net, samples,
                                                                               progress=progress)}
    add_bd_rates(results)
    if bandwidth_mbps:
        pixels = int(np.mean([s.image.size for s in samples]))
        results["latency"] = latency_table(results, bandwidth_mbps, study_images, pixels,
                                           segmentation_ms(task_net, samples))
    return results


def write_report(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write results.json, report.md and rate_dice.png into ``out_dir``; returns their paths."""
    from fedcodec.model_io import write_json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "markdown": out_dir / "report.md", "plot": out_dir / "rate_dice.png"}
    write_json(paths["json"], results)
    paths["markdown"].write_text(markdown_report(results))
    plot_results(results, paths["plot"])
    return paths
