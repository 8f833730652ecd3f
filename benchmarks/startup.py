#!/usr/bin/env python
"""Start-up time of the ``fedcodec`` command line: how long ``fedcodec --help`` takes, and what it imports.

Each command runs ``--repeats`` times in a fresh process (after one warm-up run that fills the file cache);
the script prints and records the median and the range. ``fedcodec --help`` and a command's own ``--help``
without config-backed flags must not import torch, CompressAI or MONAI (the CLI imports them lazily; the test
``tests/test_config.py::test_importing_the_cli_and_its_help_import_no_torch`` checks the imports, this script
measures the time). ``fedcodec adapt --help`` imports ``fedcodec.adapt`` (and torch) to show AdaptConfig's
defaults, so it is listed for comparison, with ``python -c "import torch"`` and an empty interpreter.

Issue target: ``fedcodec --help`` in under 2 s on this machine.

Writes ``--out`` (default benchmarks/results/startup.json) and the ``startup`` section of BENCHMARKS.md
(``--md``; ``--quick``: 2 repeats, output beside ``--out`` only).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rate_task import REPO, command_line, machine_info, machine_lines, rel, update_section  # noqa: E402

SECTION = "startup"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "startup.json"
HEAVY = ("torch", "compressai", "monai", "flwr", "opacus")
TARGET_S = 2.0


def fedcodec_command() -> list[str]:
    """The ``fedcodec`` console script beside this interpreter, else ``python -m fedcodec.cli``."""
    script = Path(sys.executable).parent / "fedcodec"
    if script.is_file():
        return [str(script)]
    found = shutil.which("fedcodec")
    return [found] if found else [sys.executable, "-m", "fedcodec.cli"]


def time_command(cmd: list[str], repeats: int) -> dict:
    subprocess.run(cmd, cwd=REPO, capture_output=True, check=True)   # warm-up: file cache, .pyc
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "runs": len(times)}


def heavy_imports_of_help() -> list[str]:
    """The heavy modules that ``fedcodec --help`` imports (expected: none)."""
    code = ("import sys\nfrom fedcodec.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            f"print('HEAVY:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    last = out.stdout.strip().splitlines()[-1]
    if not last.startswith("HEAVY:"):
        raise RuntimeError(f"unexpected output of the import probe: {last!r}")
    return [m for m in last[len("HEAVY:"):].split(",") if m]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="2 repeats; output beside --out, not in BENCHMARKS.md")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--md", default=str(REPO / "BENCHMARKS.md"))
    args = p.parse_args(argv)
    repeats = 2 if args.quick else args.repeats
    out = Path(args.out)
    if args.quick:
        out = out.with_name(out.stem + "_quick.json")
    info = machine_info()
    fc = fedcodec_command()
    commands = {
        "fedcodec --help": [*fc, "--help"],
        "fedcodec encode --help": [*fc, "encode", "--help"],
        "fedcodec adapt --help (imports torch for AdaptConfig's defaults)": [*fc, "adapt", "--help"],
        'python -c "import torch"': [sys.executable, "-c", "import torch"],
        "python -c pass": [sys.executable, "-c", "pass"],
    }
    results = {}
    for name, cmd in commands.items():
        results[name] = time_command(cmd, repeats)
        r = results[name]
        print(f"{name:<68} median {r['median_s']:.3f} s  (min {r['min_s']:.3f}, max {r['max_s']:.3f})")
    heavy = heavy_imports_of_help()
    help_s = results["fedcodec --help"]["median_s"]
    met = help_s < TARGET_S and not heavy
    print(f"fedcodec --help imports: {', '.join(heavy) or 'none of ' + ', '.join(HEAVY)}; target (< {TARGET_S:.0f} s) "
          f"{'met' if met else 'NOT met'}")
    record = {"machine": info, "command": command_line(), "results": results, "help_heavy_imports": heavy,
              "target_s": TARGET_S, "target_met": met}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"## Start-up of the command line (median of {repeats} fresh processes)", "",
             "| command | median | range |", "| --- | --- | --- |"]
    lines += [f"| `{k}` | {r['median_s']:.3f} s | {r['min_s']:.3f}-{r['max_s']:.3f} s |" for k, r in results.items()]
    lines += ["", f"`fedcodec --help` imports {', '.join(heavy) or 'none of ' + ', '.join(HEAVY)}; target "
              f"(under {TARGET_S:.0f} s on this machine) **{'met' if met else 'not met'}**.", "",
              f"Command: `{command_line()}`; raw results: `{rel(out)}`.", "", *machine_lines(info)]
    if not args.quick:
        update_section(args.md, SECTION, "\n".join(lines))
        print(f"-> {out}, section '{SECTION}' of {args.md}")
    else:
        print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
