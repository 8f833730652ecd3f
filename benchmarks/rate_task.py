#!/usr/bin/env python
"""Rate-task benchmark on a domain-shifted, held-out hospital (a script, not a test).

Compares, on ``--n`` held-out phantoms of hospital ``--hospital`` (``make_phantoms(n, seed=--eval-seed,
hospital=H)``):

- ``mse-codec``: an MSE-trained codec of the same architecture (``--mse-model``, made by
  :data:`MSE_RECIPE`, the default's two pretraining steps with ``--mse``); skipped with a note when absent;
- ``fedcodec-pretrained``: the task-pretrained codec (``--model``, default the embedded default);
- ``fedcodec-K1`` / ``fedcodec-K8``: that codec after :func:`fedcodec.adapt.adapt` (default ``AdaptConfig``) on
  K annotated shots of the same hospital drawn from a DIFFERENT seed (``--shots-seed``);
- every available anchor (x265 HEVC intra, OpenJPEG JPEG 2000, JPEG, WebP, AVIF, JPEG XL).

Everything goes through :func:`fedcodec.evaluate.evaluate` (real bytes with headers, the same frozen task
network on every decoded image, per-quality means over images, BD-rate against HEVC with Akima on monotonic
curves, the latency model). Writes ``--out`` (results.json, report.md, rate_dice.png) and rewrites the
``rate_task`` section of BENCHMARKS.md (``--md``; a ``--quick`` run writes ``OUT/BENCHMARKS.md`` instead, so a
smoke run never touches the top-level file).

Run from the repository root: ``python benchmarks/rate_task.py`` (see benchmarks/README.md).

The helpers :func:`machine_info` and :func:`update_section` are also used by ``benchmarks/speed.py``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import fcntl
import logging
import math
import os
import platform
import shlex
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MD = REPO / "BENCHMARKS.md"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "rate_task"
DEFAULT_MSE = REPO / "runs" / "pretrain_mse_zgain" / "codec.pt"
#: How the MSE baseline is made: the default's two pretraining steps with --mse (README, embedded default).
MSE_RECIPE = ("fedcodec pretrain --mse --out runs/pretrain_mse --task fedcodec/assets/default/task.pt; "
              "fedcodec pretrain --mse --init runs/pretrain_mse/codec.pt --task fedcodec/assets/default/task.pt "
              "--z-gain --gain-lr-scale 100 --steps 1500 --out runs/pretrain_mse_zgain")
ALL_ANCHORS = ("hevc", "jpeg2000", "jpeg", "webp", "avif", "jpegxl")
SECTION = "rate_task"

log = logging.getLogger("benchmarks.rate_task")

# ----------------------------------------------------------------------------------------------------------------
# BENCHMARKS.md: a fixed intro and one marked section per script

SKELETON = """\
# fedcodec benchmarks

Measurements that are not tests. Every number here was written by a script in `benchmarks/`
(see `benchmarks/README.md` for how to run them and how long they take); each script rewrites only its own
section, between `<!-- NAME:start -->` and `<!-- NAME:end -->` markers, and leaves the rest of the file alone.

How things are measured:

- **Rate** is counted from the bytes actually written: fedcodec's container (header with model id, shape,
  window, quality and checksum included), x265's raw Annex-B stream with VPS/SPS/PPS, OpenJPEG's bare J2K
  codestream, whole JPEG/WebP/AVIF/JPEG XL files. bpp = 8 x bytes / pixels, averaged per quality over images.
- **Task quality** is the Dice of the SAME frozen task network (the cloud segmenter) run on every decoded
  image, for every codec, anchors included; uncompressed Dice is the reference. PSNR and MS-SSIM are reported
  beside it.
- **BD-rate** is Bjontegaard delta rate against x265 HEVC intra (Akima interpolation of log-rate over the
  overlapping metric interval, after making each curve monotonic; the interval used is reported).
  Negative = fewer bits for the same Dice.
- **Times** are medians over repeated runs, reported as ratios against x265 and OpenJPEG measured in the same
  run on the same machine.
- Data are synthetic coronary-angiography phantoms (`fedcodec.data.make_phantoms`) with exact masks; the
  evaluation images come from a seed that neither pretraining nor adaptation used.

<!-- rate_task:start -->
_Rate-task section not generated yet: run `python benchmarks/rate_task.py`._
<!-- rate_task:end -->

<!-- speed:start -->
_Speed and memory section not generated yet: run `python benchmarks/speed.py`._
<!-- speed:end -->

<!-- federated:start -->
_Federated few-shot adaptation section: written by the federated benchmark (not generated yet)._
<!-- federated:end -->
"""


def update_section(md_path: str | Path, name: str, body: str) -> Path:
    """Replace the text between ``<!-- name:start -->`` and ``<!-- name:end -->`` in ``md_path`` by ``body``.

    The file is created from :data:`SKELETON` when missing; a section without markers is appended. The
    read-modify-write happens under an exclusive ``flock`` so that scripts writing other sections at the same
    time do not lose each other's updates.
    """
    md_path = Path(md_path)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    with open(md_path, "a+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        text = f.read() or SKELETON
        i, j = text.find(start), text.find(end)
        if i >= 0 and j > i:
            text = text[:i] + block + text[j + len(end):]
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
        f.seek(0)
        f.truncate()
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return md_path


# ----------------------------------------------------------------------------------------------------------------
# machine and run information


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # noqa: BLE001 - not installed
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            return out.stdout.strip()[:12] + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "no commit (working tree)"


def machine_info() -> dict:
    """What the numbers depend on: CPU, cores, torch threads, library versions, load at start, date."""
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(), "logical_cores": os.cpu_count(), "usable_cores": usable,
        "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(), "platform": platform.platform(),
        "git": _git_commit(),
        "versions": {m: _version(m) for m in ("torch", "compressai", "monai", "numpy", "av", "pillow",
                                              "pillow-jxl-plugin", "bjontegaard")},
    }
    try:
        info["nice"] = os.nice(0)
    except OSError:
        pass
    return info


def machine_lines(info: dict) -> list[str]:
    v = info["versions"]
    vers = ", ".join(f"{k} {val}" for k, val in v.items() if val)
    load = info["load_average_at_start"]
    busy = load[0] > 0.5 * (info["usable_cores"] or 1)
    return [f"- Date: {info['date_utc']}; code: {info['git']}.",
            f"- Machine: {info['cpu']}, {info['usable_cores']} usable cores ({info['logical_cores']} logical), "
            f"torch threads {info['torch_threads']} (inter-op {info['torch_interop_threads']}), Python "
            f"{info['python']}, {info['platform']}.",
            f"- Load average at start: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}"
            + (" (**the machine was busy; timings are inflated**)" if busy else "") + ".",
            f"- Versions: {vers}."]


def command_line() -> str:
    """The command that produced this run, relative to the repository root when possible."""
    script = Path(sys.argv[0]).resolve()
    try:
        script_s = str(script.relative_to(REPO))
    except ValueError:
        script_s = str(script)
    return shlex.join(["python", script_s, *sys.argv[1:]])


def rel(path: str | Path, start: str | Path | None = None) -> str:
    """``path`` relative to ``start`` (default: the repository root) when both lie inside the repository (or
    ``path`` lies under ``start``), else absolute."""
    path = Path(path).resolve()
    start = Path(start).resolve() if start else REPO
    inside = path.is_relative_to(start) or (path.is_relative_to(REPO) and start.is_relative_to(REPO))
    return os.path.relpath(path, start) if inside else str(path)


# ----------------------------------------------------------------------------------------------------------------
# bits needed to stay within a tolerance of uncompressed Dice


def bits_at_target(points: list[dict], target: float) -> dict:
    """Rate at which a codec's Dice first reaches ``target``.

    ``measured``: the lowest measured bpp whose mean Dice >= target (None if none). ``interpolated``: on the
    monotonic curve (:func:`fedcodec.bdrate.make_monotonic`: sorted by rate, points that do not raise Dice
    dropped), log(bpp) is interpolated linearly in Dice between the last point below and the first point at or
    above the target. When the lowest-rate point already reaches the target, both values are that point and
    ``upper_bound`` is True (the true crossing lies below the measured range).
    """
    from fedcodec.bdrate import make_monotonic

    rates, dice = make_monotonic([p["bpp"] for p in points], [p["dice"] for p in points])
    out: dict[str, Any] = {"target_dice": target, "measured": None, "measured_dice": None, "measured_quality": None,
                           "interpolated": None, "upper_bound": False, "reached": False,
                           "best_dice": max(p["dice"] for p in points)}
    idx = next((k for k, d in enumerate(dice) if d >= target), None)
    if idx is None:
        return out
    hit = min((p for p in points if p["dice"] >= target), key=lambda p: p["bpp"])
    out.update(reached=True, measured=hit["bpp"], measured_dice=hit["dice"], measured_quality=hit["quality"])
    if idx == 0:
        out.update(interpolated=rates[0], upper_bound=True)
    else:
        d0, d1 = dice[idx - 1], dice[idx]
        l0, l1 = math.log(rates[idx - 1]), math.log(rates[idx])
        out["interpolated"] = math.exp(l0 + (target - d0) / (d1 - d0) * (l1 - l0))
    return out


def add_bits_at_target(results: dict, tolerance: float, reference: str = "jpeg2000") -> None:
    target = results["uncompressed_dice"] - tolerance
    table = {name: bits_at_target(entry["points"], target) for name, entry in results["codecs"].items()}
    ref = table.get(reference)
    for row in table.values():
        for key in ("measured", "interpolated"):
            ok = ref is not None and ref[key] is not None and row[key] is not None
            row[f"ratio_vs_{reference}_{key}"] = ref[key] / row[key] if ok else None
    results["bits_at_target"] = {"tolerance": tolerance, "target_dice": target, "reference": reference,
                                 "codecs": table}


# ----------------------------------------------------------------------------------------------------------------
# BENCHMARKS.md section


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.1f}%"


def _iv(v: list | None, fmt: str = ".3f") -> str:
    return "–" if not v else f"{v[0]:{fmt}} – {v[1]:{fmt}}"


def section_markdown(results: dict, md_path: Path) -> str:
    b = results["benchmark"]
    out_rel = rel(b["out_dir"], md_path.parent)
    lines = [f"## Rate-task on a held-out, domain-shifted hospital (hospital {b['hospital']})", ""]
    if b["quick"]:
        lines += ["**QUICK SMOKE RUN (tiny n, few adaptation steps): these numbers mean nothing.**", ""]
    lines += [f"{results['num_images']} held-out phantom{'s' if results['num_images'] != 1 else ''} of hospital {b['hospital']} ({b['size']}x{b['size']}, "
              f"{b['bit_depth']}-bit, `make_phantoms(n={b['n']}, seed={b['eval_seed']}, hospital={b['hospital']})`); "
              f"adaptation shots from `make_phantoms(8, seed={b['shots_seed']}, hospital={b['hospital']})` "
              f"(K=1 uses the first). Task network: {b['task']}. Uncompressed Dice "
              f"**{results['uncompressed_dice']:.4f}**. Full tables: [{out_rel}/report.md]({out_rel}/report.md), "
              f"plot: [{out_rel}/rate_dice.png]({out_rel}/rate_dice.png), data: `{out_rel}/results.json`.", ""]
    lines += ["| codec | what | model id | bpp range | Dice range |", "| --- | --- | --- | --- | --- |"]
    for name, entry in results["codecs"].items():
        pts = entry["points"]
        lines.append(f"| {name} | {b['descriptions'].get(name, entry['kind'])} | {entry.get('model_id', '–')} | "
                     f"{min(p['bpp'] for p in pts):.3f} – {max(p['bpp'] for p in pts):.3f} | "
                     f"{min(p['dice'] for p in pts):.3f} – {max(p['dice'] for p in pts):.3f} |")
    for note in b["notes"]:
        lines += ["", f"Note: {note}"]

    if b["adaptation"]:
        lines += ["", "Few-shot adaptation (default `AdaptConfig` unless stated; seconds include everything "
                  "inside `adapt`):", "",
                  "| codec | shots K | steps | seconds | s/step | final loss | final bpp | final task loss | "
                  "what `adapt` chose |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, a in b["adaptation"].items():
            m = a["metrics"]

            def num(key: str) -> str:
                return f"{m[key]:.4f}" if math.isfinite(m.get(key, math.nan)) else "–"

            lines.append(f"| {name} | {a['shots']} | {int(m['steps'])} | {m['seconds']:.1f} | "
                         f"{m['seconds'] / max(m['steps'], 1):.3f} | {num('loss')} | {num('bpp')} | "
                         f"{num('task')} | {a.get('reason', '')} |")

    lines += ["", "### BD-rate against x265 HEVC intra", ""]
    if "hevc" not in results["codecs"]:
        lines.append("HEVC anchor not evaluated: no BD-rates.")
    else:
        lines += ["Akima on log-rate over the overlapping metric interval, each curve made monotonic first "
                  "(`fedcodec.bdrate`). Negative = fewer bits than HEVC for the same Dice (or PSNR). A BD-rate only "
                  "covers its interval: read it with the interval.", "",
                  "| codec | BD-rate on Dice | Dice interval | BD-rate on PSNR | PSNR interval (dB) |",
                  "| --- | --- | --- | --- | --- |"]
        why = []
        for name, e in results["codecs"].items():
            lines.append(f"| {name} | {_pct(e.get('bd_rate_vs_hevc'))} | {_iv(e.get('bd_rate_vs_hevc_interval'))} | "
                         f"{_pct(e.get('bd_rate_psnr_vs_hevc'))} | {_iv(e.get('bd_rate_psnr_vs_hevc_interval'), '.2f')} |")
            for metric, key in (("Dice", "bd_rate_vs_hevc_note"), ("PSNR", "bd_rate_psnr_vs_hevc_note")):
                if e.get(key):
                    why.append(f"- {name}, {metric}: n/a because {e[key]}")
        if why:
            lines += [""] + why

    bt = results["bits_at_target"]
    ref = bt["reference"]
    lines += ["", f"### Bits at Dice within {bt['tolerance']} of uncompressed (Dice >= {bt['target_dice']:.4f})", "",
              "*measured*: the lowest measured rate point whose mean Dice reaches the target. *interpolated*: "
              "log(bpp) interpolated linearly in Dice on the monotonic curve between the last point below and the "
              "first point at or above the target. `<=` marks a codec whose lowest-rate point already reaches the "
              "target (the true value is lower). Ratio = JPEG 2000 bpp / codec bpp (> 1: fewer bits than "
              "JPEG 2000; the seed paper reports about 10x).", "",
              f"| codec | bpp (measured) | quality | Dice there | ratio vs {ref} (measured) | bpp (interpolated) | "
              f"ratio vs {ref} (interpolated) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in bt["codecs"].items():
        if not r["reached"]:
            lines.append(f"| {name} | **never reaches it** (best Dice {r['best_dice']:.4f}) | – | – | – | – | – |")
            continue
        le = "<= " if r["upper_bound"] else ""
        rm, ri = r[f"ratio_vs_{ref}_measured"], r[f"ratio_vs_{ref}_interpolated"]
        lines.append(f"| {name} | {le}{r['measured']:.4f} | {r['measured_quality']} | {r['measured_dice']:.4f} | "
                     f"{'n/a' if rm is None else f'{rm:.2f}x'} | {le}{r['interpolated']:.4f} | "
                     f"{'n/a' if ri is None else f'{ri:.2f}x'} |")
    if ref in bt["codecs"] and not bt["codecs"][ref]["reached"]:
        lines += ["", f"{ref} never reaches the target in its sweep, so no ratio against it exists."]

    lat = results.get("latency")
    if lat:
        lines += ["", f"### Latency model at {lat['bandwidth_mbps']:g} Mbit/s",
                  "", f"Liu et al.'s model: transmission + encode + decode + segmentation per image, and for a study "
                  f"of {lat['study_images']} images, at the lowest rate with Dice >= {lat['target_dice']:.4f} (else "
                  "the codec's best-Dice point, flagged). Encode/decode are medians over the evaluation images of "
                  "this run (single-image calls, CPU); segmentation is the frozen task network on one image.", "",
                  "| codec | bpp | Dice | transmit ms | encode ms | decode ms | segment ms | per image ms | "
                  "per study s |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, r in lat["codecs"].items():
            flag = "" if r["meets_target"] else " (below target)"
            lines.append(f"| {name} | {r['bpp']:.4f} | {r['dice']:.4f}{flag} | {r['transmission_ms']:.2f} | "
                         f"{r['encode_ms']:.1f} | {r['decode_ms']:.1f} | {r['segmentation_ms']:.1f} | "
                         f"{r['per_image_ms']:.1f} | {r['per_study_s']:.2f} |")

    lines += ["", "### Reproduce", "", "```bash", ". .venv/bin/activate"]
    lines += b["reproduce"]
    lines += ["```", "", "### Run", ""]
    lines += machine_lines(b["machine"])
    lines += [f"- Seeds: evaluation `{b['eval_seed']}`, shots `{b['shots_seed']}`, adaptation `{b['adapt_seed']}`; "
              f"hospital {b['hospital']}.",
              f"- Wall time: adaptation {b['seconds']['adaptation']:.0f} s, evaluation "
              f"{b['seconds']['evaluation']:.0f} s, total {b['seconds']['total']:.0f} s."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# main


def _pretrain_command(meta: dict, out: str) -> str | None:
    """A ``fedcodec pretrain`` command line rebuilt from a codec file's recorded pretrain config."""
    cfg = (meta.get("pretrain") or {}).get("config")
    if not cfg:
        return None
    from fedcodec.pretrain import PretrainConfig

    d = PretrainConfig()
    flags = []
    for key in ("steps", "batch_size", "crop", "images", "image_size", "hospital", "seed", "N", "M",
                "num_qualities", "task_steps", "lambda_adv"):
        if key in cfg and cfg[key] != getattr(d, key):
            flags += [f"--{key.replace('_', '-')}", str(cfg[key])]
    if cfg.get("semantic") is False:
        flags.append("--mse")
    if cfg.get("z_gain"):
        flags.append("--z-gain")
    if cfg.get("gain_lr_scale", d.gain_lr_scale) != d.gain_lr_scale:
        flags += ["--gain-lr-scale", f"{cfg['gain_lr_scale']:g}"]
    if cfg.get("init"):
        # a continuation: the codec it started from is the first step (see the README's embedded default)
        flags = ["--init", "BASE/codec.pt", "--task", "BASE/task.pt", *flags]
    return shlex.join(["fedcodec", "pretrain", "--out", out, *flags])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--hospital", type=int, default=1, help="domain-shifted hospital id (0 is the source domain)")
    p.add_argument("--n", type=int, default=None, help="held-out evaluation images (default 16; --quick: 2)")
    p.add_argument("--size", type=int, default=256, help="phantom size in pixels")
    p.add_argument("--eval-seed", type=int, default=1000, help="seed of the held-out evaluation phantoms")
    p.add_argument("--shots-seed", type=int, default=2000, help="seed of the adaptation shots (must differ)")
    p.add_argument("--shots", default="1,8", help="comma-separated K values to adapt with")
    p.add_argument("--steps", type=int, default=None, help="adaptation steps (default: AdaptConfig's; --quick: 5)")
    p.add_argument("--model", default=None, help="task-pretrained codec file (default: the embedded default)")
    p.add_argument("--task", default=None, help="TorchScript task network (default: the embedded default)")
    p.add_argument("--mse-model", default=str(DEFAULT_MSE), help="MSE-trained codec of the same architecture "
                   "(`fedcodec pretrain --mse --out DIR`); skipped with a note when absent; '' to skip")
    p.add_argument("--anchors", default=",".join(ALL_ANCHORS), help="anchors to run (unavailable ones are skipped)")
    p.add_argument("--bandwidth", type=float, default=10.0, help="link in Mbit/s for the latency model")
    p.add_argument("--study-images", type=int, default=100, help="images per study for the latency model")
    p.add_argument("--tolerance", type=float, default=0.01, help="Dice tolerance below uncompressed")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="smoke run: n=2, 5 adaptation steps, section written to "
                   "OUT/BENCHMARKS.md")
    p.add_argument("--out", default=None, help=f"output folder (default {rel(DEFAULT_OUT)}; --quick: "
                   f"{rel(DEFAULT_OUT)}_quick)")
    p.add_argument("--md", default=None, help="markdown file whose rate_task section is rewritten (default "
                   "BENCHMARKS.md at the repository root; --quick: OUT/BENCHMARKS.md; '' = none)")
    args = p.parse_args(argv)
    if args.eval_seed == args.shots_seed:
        p.error("--eval-seed and --shots-seed must differ (the evaluation images must be held out)")
    if args.n is None:
        args.n = 2 if args.quick else 16
    if args.quick and args.steps is None:
        args.steps = 5
    if args.n < 1:
        p.error("--n must be at least 1")
    args.shots = sorted({int(k) for k in args.shots.split(",") if k.strip()})
    if any(k < 1 for k in args.shots):
        p.error("--shots values must be >= 1")
    args.out = Path(args.out) if args.out else (Path(str(DEFAULT_OUT) + "_quick") if args.quick else DEFAULT_OUT)
    args.md = None if args.md == "" else Path(args.md) if args.md else (
        args.out / "BENCHMARKS.md" if args.quick else DEFAULT_MD)
    return args


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    t_start = time.perf_counter()

    import torch

    from fedcodec.adapt import AdaptConfig, adapt, config_dict
    from fedcodec.anchors import available_anchors
    from fedcodec.data import make_phantoms
    from fedcodec.errors import FedcodecError
    from fedcodec.evaluate import evaluate, write_report
    from fedcodec.model_io import DEFAULT_CODEC, DEFAULT_TASK, load_codec, load_task, read_codec_file

    if args.threads:
        torch.set_num_threads(args.threads)
    machine = machine_info()
    notes: list[str] = []
    try:
        codec = load_codec(args.model)
        task_net = load_task(args.task)
    except FedcodecError as exc:
        print(f"rate_task: error: {exc}", file=sys.stderr)
        return 2
    model_path = Path(args.model) if args.model else DEFAULT_CODEC
    task_path = Path(args.task) if args.task else DEFAULT_TASK
    model_meta = read_codec_file(model_path).get("meta", {})

    # ---- held-out evaluation images and, from another seed, the adaptation shots
    samples = make_phantoms(args.n, seed=args.eval_seed, size=args.size, hospital=args.hospital)
    max_k = max(args.shots) if args.shots else 0
    shots = make_phantoms(max_k, seed=args.shots_seed, size=args.size, hospital=args.hospital) if max_k else []
    log.info("hospital %d: %d evaluation phantoms (seed %d), %d shots (seed %d)", args.hospital, len(samples),
             args.eval_seed, len(shots), args.shots_seed)

    descriptions = {"fedcodec-pretrained": "task-pretrained codec, not adapted"}
    extra: dict[str, Any] = {}
    reproduce: list[str] = []

    # ---- MSE baseline
    mse_path = Path(args.mse_model) if args.mse_model else None
    if mse_path is not None and mse_path.is_file():
        mse = load_codec(mse_path)
        if mse.config != codec.config:
            notes.append(f"the MSE codec's configuration {mse.config} differs from the task-pretrained codec's "
                         f"{codec.config}.")
        extra["mse-codec"] = mse
        descriptions["mse-codec"] = f"MSE-trained, same architecture (`{rel(mse_path)}`)"
        cmd = _pretrain_command(read_codec_file(mse_path).get("meta", {}), rel(mse_path.parent))
        if cmd:
            reproduce.append(cmd + "   # the MSE baseline (BASE: `fedcodec pretrain --mse --out BASE`)")
    else:
        why = "no --mse-model given" if mse_path is None else f"{rel(mse_path)} does not exist"
        notes.append(f"MSE-trained codec skipped ({why}); make it with `{MSE_RECIPE}` (the default's two "
                     "pretraining steps with --mse) and rerun.")
        log.warning("MSE codec skipped: %s", why)

    # ---- few-shot adaptation of copies of the pretrained codec
    adaptation: dict[str, dict] = {}
    t_adapt = time.perf_counter()
    adapt_config = AdaptConfig() if args.steps is None else AdaptConfig(steps=args.steps)
    for k in args.shots:
        name = f"fedcodec-K{k}"
        c = load_codec(args.model)
        log.info("adapting %s on %d shot(s), %d steps", name, k, adapt_config.steps)
        res = adapt(c, task_net, shots[:k], adapt_config, progress=True)
        extra[name] = c
        adaptation[name] = {"shots": k, "samples": [s.name for s in shots[:k]], "config": config_dict(adapt_config),
                            "metrics": res.metrics, "reason": res.reason}
        descriptions[name] = f"pretrained + `adapt` on K={k} shot{'s' if k > 1 else ''}"
        log.info("%s: %.1f s; %s", name, res.metrics["seconds"], res.reason)
    t_adapt = time.perf_counter() - t_adapt

    # ---- anchors
    available = set(available_anchors())
    anchors = [a.strip() for a in args.anchors.split(",") if a.strip()]
    for a in [a for a in anchors if a not in available]:
        notes.append(f"anchor {a} is not available here (its library does not import); skipped.")
    anchors = [a for a in anchors if a in available]
    descriptions.update({"hevc": "x265 intra (PyAV, preset medium, QP sweep)", "jpeg2000": "OpenJPEG (Pillow, "
                         "bare J2K)", "jpeg": "libjpeg-turbo (Pillow)", "webp": "libwebp (Pillow, method 6)",
                         "avif": "libavif (Pillow, speed 6)", "jpegxl": "libjxl (pillow-jxl-plugin, effort 7)"})

    # ---- evaluation: everything through fedcodec.evaluate.evaluate
    t_eval = time.perf_counter()
    results = evaluate(codec, task_net, samples, anchors=anchors, codec_name="fedcodec-pretrained",
                       extra_codecs=extra, bandwidth_mbps=args.bandwidth, study_images=args.study_images,
                       progress=log.info)
    t_eval = time.perf_counter() - t_eval
    add_bits_at_target(results, args.tolerance)

    model_desc = rel(model_path) if args.model else f"embedded default (`{rel(DEFAULT_CODEC)}`)"
    task_desc = f"`{rel(task_path)}`" + ("" if args.task else " (embedded default)")
    recipe = (model_meta.get("pretrain") or {}).get("recipe")
    pre_cmd = _pretrain_command(model_meta, "DIR")
    if isinstance(recipe, str) and recipe:
        # a codec made in several runs (the embedded default) records how in words; one config would mislead
        reproduce.insert(0, f"# how the task-pretrained codec was trained: {recipe}")
    elif pre_cmd:
        reproduce.insert(0, pre_cmd + "   # how the task-pretrained codec was trained (config recorded in its file;"
                         " BASE: `fedcodec pretrain --out BASE --seed 0`)")
    reproduce.append(command_line())
    results["title"] = f"Rate-task on held-out hospital {args.hospital}" + (" (QUICK SMOKE RUN)" if args.quick else "")
    results["benchmark"] = {
        "script": "benchmarks/rate_task.py", "quick": args.quick, "hospital": args.hospital, "n": args.n,
        "size": args.size, "bit_depth": samples[0].bit_depth, "eval_seed": args.eval_seed,
        "shots_seed": args.shots_seed, "adapt_seed": adapt_config.seed, "model": model_desc,
        "task": task_desc, "mse_model": str(mse_path) if mse_path and "mse-codec" in extra else None,
        "anchors": anchors, "adaptation": adaptation, "descriptions": descriptions, "notes": notes,
        "reproduce": reproduce, "command": command_line(), "machine": machine, "out_dir": str(args.out.resolve()),
        "eval_images": [s.name for s in samples],
        "seconds": {"adaptation": t_adapt, "evaluation": t_eval, "total": time.perf_counter() - t_start},
    }
    paths = write_report(results, args.out)
    md = update_section(args.md, SECTION, section_markdown(results, args.md)) if args.md else "(no markdown)"
    log.info("results -> %s, %s, %s; section '%s' -> %s (%.0f s in all)", paths["json"], paths["markdown"],
             paths["plot"], SECTION, md, results["benchmark"]["seconds"]["total"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
