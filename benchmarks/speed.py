#!/usr/bin/env python
"""Encode/decode speed and peak memory of fedcodec against x265 and OpenJPEG, same machine, same run.

One 512x512 8-bit phantom (``make_phantoms(1, seed=--seed, size=512, hospital=0)``). For fedcodec at a low,
a middle and a high quality (``fedcodec.coding.encode_image`` / ``decode_image``, real container bytes), and
for the x265 (``hevc``) and OpenJPEG (``jpeg2000``) anchors at the rate closest to fedcodec's at each quality
(x265: the QP whose bpp is nearest in log-rate; OpenJPEG: target rate = fedcodec's bpp), the script times
``--repeats`` encodes and decodes (after 2 warm-up calls), interleaving the three codecs repeat by repeat so
that load changes hit all of them alike, and reports medians and the ratios fedcodec / x265 and
fedcodec / OpenJPEG. It also times the frozen task network on the 512x512 image.

Peak memory: for fedcodec and every available anchor a FRESH subprocess loads what it needs, then encodes and
decodes the image once; it reports its RSS before coding, the peak RSS during coding (Linux: the high-water
mark is reset through ``/proc/self/clear_refs`` just before coding; elsewhere the lifetime peak from
``resource.getrusage``), and tracemalloc's peak of Python-visible allocations (numpy included; torch's tensor
memory is not visible to tracemalloc, and torch on CPU has no ``max_memory_allocated``). Anchor subprocesses
import ``fedcodec.anchors`` without the package ``__init__`` so that torch is not loaded into them.

Issue target: "Encoding a 512x512 image no slower than x265 on the same machine in the same run".

Writes ``--out`` (default benchmarks/results/speed.json) and the ``speed`` section of BENCHMARKS.md (``--md``;
``--quick`` writes next to ``--out`` instead).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rate_task import REPO, command_line, machine_info, machine_lines, rel, update_section  # noqa: E402

DEFAULT_OUT = REPO / "benchmarks" / "results" / "speed.json"
DEFAULT_MD = REPO / "BENCHMARKS.md"
SECTION = "speed"
ANCHOR_NAMES = {"hevc": "x265", "jpeg2000": "OpenJPEG"}

log = logging.getLogger("benchmarks.speed")


# ----------------------------------------------------------------------------------------------------------------
# memory child (a fresh process per codec)


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (peak RSS) to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _import_anchors_without_torch():
    """``fedcodec.anchors`` without running ``fedcodec/__init__`` (which imports torch)."""
    import types

    pkg = types.ModuleType("fedcodec")
    pkg.__path__ = [str(REPO / "fedcodec")]
    sys.modules.setdefault("fedcodec", pkg)
    import fedcodec.anchors as anchors

    return anchors


def memory_child(args: argparse.Namespace) -> int:
    import numpy as np

    rss_start = _status_kb("VmRSS")
    image = np.load(args.image)
    if args.memory_child == "fedcodec":
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        from fedcodec.coding import decode_image, encode_image
        from fedcodec.model_io import load_codec

        rss_imports = _status_kb("VmRSS")
        codec = load_codec(args.model)
        quality = int(args.quality)

        def run():
            enc = encode_image(codec, image, quality)
            decode_image(codec, enc.data)
            return len(enc.data)
    else:
        anchors = _import_anchors_without_torch()
        anchor = anchors.get_anchor(args.memory_child)
        anchor.encode_decode(image[:64, :64].copy(), 0.5 if args.memory_child == "jpeg2000" else
                             anchor.qualities[0])  # load the codec library (as a model load would)
        rss_imports = _status_kb("VmRSS")
        quality = float(args.quality) if args.memory_child == "jpeg2000" else int(float(args.quality))

        def run():
            return len(anchor.encode_decode(image, quality).data)

    import tracemalloc

    torch_loaded = "torch" in sys.modules
    rss_before = _status_kb("VmRSS")
    lifetime_peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reset = _reset_peak()
    tracemalloc.start()
    nbytes = run()
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak = _status_kb("VmHWM") if reset else None
    out = {"codec": args.memory_child, "quality": args.quality, "bytes": nbytes, "torch_loaded": torch_loaded,
           "rss_start_kb": rss_start, "rss_after_imports_kb": rss_imports, "rss_before_coding_kb": rss_before,
           "peak_rss_coding_kb": peak if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
           "peak_reset": reset, "lifetime_peak_before_coding_kb": lifetime_peak_before,
           "lifetime_peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
           "tracemalloc_peak_kb": py_peak / 1024}
    print("MEMORY " + json.dumps(out))
    return 0


def measure_memory(name: str, quality, image_path: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", name, "--image", image_path,
           "--quality", str(quality)]
    if args.model:
        cmd += ["--model", args.model]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    for line in proc.stdout.splitlines():
        if line.startswith("MEMORY "):
            return json.loads(line[7:])
    return {"codec": name, "error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}


# ----------------------------------------------------------------------------------------------------------------
# timing


def _median(xs: list[float]) -> float:
    import numpy as np

    return float(np.median(xs))


def _stats(xs: list[float]) -> dict:
    import numpy as np

    return {"median_ms": _median(xs), "p25_ms": float(np.percentile(xs, 25)), "p75_ms": float(np.percentile(xs, 75)),
            "min_ms": float(min(xs)), "n": len(xs)}


def hevc_qp_for_rate(anchor, image, target_bpp: float, qps) -> tuple[int, float]:
    """The x265 QP whose bpp is closest to ``target_bpp`` in log-rate, and its bpp."""
    best = None
    for qp in qps:
        bpp = anchor.encode_decode(image, qp).bpp
        d = abs(math.log(bpp) - math.log(target_bpp))
        if best is None or d < best[0]:
            best = (d, qp, bpp)
    return best[1], best[2]


def _setting(codec: str, quality) -> str:
    q = float(quality)
    if codec == "fedcodec":
        return f"quality {int(q) + 1}"
    if codec == "hevc":
        return f"QP {int(q)}"
    if codec == "jpeg2000":
        return f"target {q:.4f} bpp"
    return f"quality {int(q)}"


def section_markdown(res: dict, md_path: Path) -> str:
    out_rel = rel(res["out"], md_path.parent)
    lines = ["## Speed and memory (512x512, 8-bit)", ""]
    if res["quick"]:
        lines += ["**QUICK SMOKE RUN (few repeats): these numbers mean nothing.**", ""]
    lines += [f"One {res['size']}x{res['size']} 8-bit phantom (`make_phantoms(1, seed={res['seed']}, size={res['size']}, "
              f"hospital=0)`), codec {res['model']}. Medians of {res['repeats']} encodes and decodes after 2 warm-up "
              "calls, the three codecs interleaved repeat by repeat. Anchors at the rate closest to fedcodec's: x265 "
              "at the nearest QP in log-rate, OpenJPEG with target rate = fedcodec's bpp. fedcodec times cover "
              "`encode_image` (window, pad, analysis, policy, rANS, container) and `decode_image`; anchor times "
              "cover array -> bytes (encoder set-up included) and bytes -> array. "
              f"torch threads {res['torch_threads']}; x265 and OpenJPEG use their own default threading. "
              f"Data: `{out_rel}`.", "",
              "| level | codec | setting | bpp | encode ms | decode ms | encode ratio fedcodec / this | "
              "decode ratio fedcodec / this |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for lv in res["levels"]:
        f = lv["fedcodec"]
        lines.append(f"| {lv['level']} | fedcodec | {_setting('fedcodec', f['quality'])} | {f['bpp']:.4f} | "
                     f"{f['encode']['median_ms']:.1f} | {f['decode']['median_ms']:.1f} | – | – |")
        for a in ("hevc", "jpeg2000"):
            if a not in lv:
                continue
            e = lv[a]
            setting = _setting(a, e["quality"])
            lines.append(f"| {lv['level']} | {ANCHOR_NAMES[a]} | {setting} | {e['bpp']:.4f} | "
                         f"{e['encode']['median_ms']:.1f} | {e['decode']['median_ms']:.1f} | "
                         f"**{lv['ratios'][a]['encode']:.2f}** | {lv['ratios'][a]['decode']:.2f} |")
    tgt = res.get("target")
    if tgt:
        met = "MET" if tgt["met_all"] else ("met at " + ", ".join(tgt["met_levels"]) if tgt["met_levels"] else "NOT MET")
        lines += ["", f"Target \"encoding a 512x512 image no slower than x265 on the same machine in the same run\": "
                  f"**{met}** (encode ratio fedcodec / x265: " +
                  ", ".join(f"{lv} {r:.2f}" for lv, r in tgt["ratios"].items()) + "; <= 1 meets it)."]
    seg = res["segmentation"]
    lines += ["", f"Segmentation by the frozen task network on the 512x512 image: median {seg['median_ms']:.1f} ms "
              f"({seg['repeats']} runs).", ""]
    mem = res.get("memory")
    if mem:
        lines += ["Peak memory, each codec in a fresh subprocess that loads what it needs and then encodes and "
                  "decodes the image once (middle level). *coding peak* = peak RSS during encode+decode (high-water "
                  "mark reset just before coding); *after imports* = RSS once the libraries are loaded (fedcodec: "
                  "torch, compressai, fedcodec; anchors: numpy, the codec library after one tiny warm-up call, no "
                  "torch); *before coding* = after the model is loaded too; tracemalloc = Python-visible "
                  "allocations during coding (numpy included, torch tensors not; torch on CPU has no "
                  "`max_memory_allocated`).", "",
                  "| codec | setting | RSS after imports MB | RSS before coding MB | coding peak RSS MB | "
                  "increase MB | tracemalloc peak MB |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for m in mem:
            if "error" in m:
                lines.append(f"| {m['codec']} | – | error: {m['error']} | | | | |")
                continue
            inc = (m["peak_rss_coding_kb"] - m["rss_before_coding_kb"]) / 1024
            peak_note = "" if m["peak_reset"] else " (lifetime)"
            lines.append(f"| {m['codec']} | {_setting(m['codec'], m['quality'])} | "
                         f"{m['rss_after_imports_kb'] / 1024:.0f} | {m['rss_before_coding_kb'] / 1024:.0f} | "
                         f"{m['peak_rss_coding_kb'] / 1024:.0f}{peak_note} | {inc:.0f} | "
                         f"{m['tracemalloc_peak_kb'] / 1024:.1f} |")
    lines += ["", "Reproduce:", "", "```bash", ". .venv/bin/activate", res["command"], "```", "", "Run:", ""]
    lines += machine_lines(res["machine"])
    lines += [f"- Wall time {res['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=None, help="codec file (default: the embedded default)")
    p.add_argument("--task", default=None, help="TorchScript task network (default: the embedded default)")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0, help="phantom seed")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 20; --quick: 3)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--quick", action="store_true", help="smoke run: 3 repeats, coarse QP search, output next to "
                   "--out")
    p.add_argument("--out", default=None, help=f"JSON output (default {rel(DEFAULT_OUT)}; --quick: "
                   "benchmarks/results/speed_quick.json)")
    p.add_argument("--md", default=None, help="markdown file whose speed section is rewritten (default "
                   "BENCHMARKS.md at the repository root; --quick: BENCHMARKS.md beside --out)")
    # internal: one fresh process measuring peak memory
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--image", default=None, help=argparse.SUPPRESS)
    p.add_argument("--quality", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 20
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if args.out is None:
        args.out = DEFAULT_OUT.with_name("speed_quick.json") if args.quick else DEFAULT_OUT
    args.out = Path(args.out)
    if args.md is None:
        args.md = args.out.parent / "BENCHMARKS.md" if args.quick else DEFAULT_MD
    args.md = Path(args.md)
    return args


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    args = parse_args(argv)
    if args.memory_child:
        return memory_child(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    t_start = time.perf_counter()

    import numpy as np
    import torch

    from fedcodec.anchors import available_anchors, get_anchor
    from fedcodec.coding import decode_image, encode_image
    from fedcodec.data import make_phantoms
    from fedcodec.errors import FedcodecError
    from fedcodec.evaluate import segmentation_ms
    from fedcodec.model_io import DEFAULT_CODEC, load_codec, load_task

    if args.threads:
        torch.set_num_threads(args.threads)
    machine = machine_info()
    try:
        codec = load_codec(args.model)
        task_net = load_task(args.task)
    except FedcodecError as exc:
        print(f"speed: error: {exc}", file=sys.stderr)
        return 2
    sample = make_phantoms(1, seed=args.seed, size=args.size, hospital=0)[0]
    image = sample.image
    assert image.dtype == np.uint8, "hospital 0 phantoms are 8-bit"
    nq = codec.num_qualities
    levels = {"low": 0, "middle": (nq - 1) // 2, "high": nq - 1}
    anchors_here = [a for a in ("hevc", "jpeg2000") if a in available_anchors()]
    hevc = get_anchor("hevc") if "hevc" in anchors_here else None
    j2k = get_anchor("jpeg2000") if "jpeg2000" in anchors_here else None
    qps = range(51, 9, -3 if args.quick else -1)

    results_levels = []
    for level, q in levels.items():
        enc = encode_image(codec, image, q)
        decode_image(codec, enc.data)  # warm-up 1 (with the encode above)
        entry = {"level": level, "fedcodec": {"quality": q, "bpp": enc.bpp, "bytes": len(enc.data)}}
        settings = {}
        if hevc:
            qp, bpp = hevc_qp_for_rate(hevc, image, enc.bpp, qps)
            settings["hevc"] = (hevc, qp)
            log.info("%s: fedcodec q%d %.4f bpp; x265 QP %d %.4f bpp", level, q + 1, enc.bpp, qp, bpp)
        if j2k:
            settings["jpeg2000"] = (j2k, float(enc.bpp))
        times = {"fedcodec": ([], [])} | {a: ([], []) for a in settings}
        last = {}
        for r in range(args.repeats + 2):  # 2 warm-up rounds, not recorded
            t0 = time.perf_counter()
            e = encode_image(codec, image, q)
            t1 = time.perf_counter()
            decode_image(codec, e.data)
            t2 = time.perf_counter()
            if r >= 2:
                times["fedcodec"][0].append(1e3 * (t1 - t0))
                times["fedcodec"][1].append(1e3 * (t2 - t1))
            for a, (anchor, aq) in settings.items():
                res = anchor.encode_decode(image, aq)
                last[a] = res
                if r >= 2:
                    times[a][0].append(res.encode_ms)
                    times[a][1].append(res.decode_ms)
        entry["fedcodec"].update(encode=_stats(times["fedcodec"][0]), decode=_stats(times["fedcodec"][1]))
        entry["ratios"] = {}
        for a, (anchor, aq) in settings.items():
            entry[a] = {"quality": aq, "bpp": last[a].bpp, "bytes": len(last[a].data),
                        "encode": _stats(times[a][0]), "decode": _stats(times[a][1])}
            entry["ratios"][a] = {k: entry["fedcodec"][k]["median_ms"] / entry[a][k]["median_ms"]
                                  for k in ("encode", "decode")}
        log.info("%s: fedcodec enc %.1f / dec %.1f ms; %s", level, entry["fedcodec"]["encode"]["median_ms"],
                 entry["fedcodec"]["decode"]["median_ms"],
                 "; ".join(f"{a} enc {entry[a]['encode']['median_ms']:.1f} / dec {entry[a]['decode']['median_ms']:.1f} "
                           f"ms (ratio {entry['ratios'][a]['encode']:.2f})" for a in settings))
        results_levels.append(entry)

    seg = {"median_ms": segmentation_ms(task_net, [sample], repeats=args.repeats), "repeats": args.repeats}
    log.info("segmentation %.1f ms", seg["median_ms"])

    target = None
    if hevc:
        ratios = {lv["level"]: lv["ratios"]["hevc"]["encode"] for lv in results_levels}
        met = [lv for lv, r in ratios.items() if r <= 1.0]
        target = {"ratios": ratios, "met_levels": met, "met_all": len(met) == len(ratios)}

    memory = None
    if not args.no_memory:
        mid = next(lv for lv in results_levels if lv["level"] == "middle")
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "image.npy")
            np.save(path, image)
            memory = [measure_memory("fedcodec", mid["fedcodec"]["quality"], path, args)]
            for a in available_anchors():
                if a in mid:
                    quality = mid[a]["quality"]
                else:  # other anchors: a middle setting of their sweep
                    qs = get_anchor(a).qualities
                    quality = qs[len(qs) // 2]
                memory.append(measure_memory(a, quality, path, args))
        for m in memory:
            if "error" in m:
                log.warning("memory of %s: %s", m["codec"], m["error"])
            else:
                log.info("memory %s: before %.0f MB, coding peak %.0f MB, tracemalloc %.1f MB", m["codec"],
                         m["rss_before_coding_kb"] / 1024, m["peak_rss_coding_kb"] / 1024,
                         m["tracemalloc_peak_kb"] / 1024)

    res = {"script": "benchmarks/speed.py", "quick": args.quick, "size": args.size, "seed": args.seed,
           "repeats": args.repeats, "model": rel(args.model) if args.model else
           f"embedded default (`{rel(DEFAULT_CODEC)}`)", "model_id": codec.identity_hash()[:12],
           "torch_threads": torch.get_num_threads(), "levels": results_levels, "target": target,
           "segmentation": seg, "memory": memory, "machine": machine, "command": command_line(),
           "out": str(args.out.resolve()), "seconds": time.perf_counter() - t_start}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    md = update_section(args.md, SECTION, section_markdown(res, args.md))
    log.info("results -> %s; section '%s' -> %s (%.0f s)", args.out, SECTION, md, res["seconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
