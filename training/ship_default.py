#!/usr/bin/env python
"""Ship a codec of a training run as the embedded default (``fedcodec/assets/default/``).

    python training/ship_default.py RUN_FOLDER [FILE] --recipe TEXT --keep-previous-as DATE [--rule TEXT]

The current default moves to ``fedcodec/assets/default-DATE/`` first (so bitstreams it wrote still decode:
add its model id to ``fedcodec.model_io.PREVIOUS_DEFAULT_CODECS``). The codec is re-saved with its lineage in
its meta (the same weights, so the same model id); the run's pretrain.json and metrics.csv go beside it, and
each ancestor run named by ``init`` is recorded in ``pretrain.json`` ("lineage"). The task network stays (the
runs continue the lean recipe with its first ensemble segmenter).
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

from fedcodec.model_io import DEFAULT_DIR, load_codec, read_codec_file, save_codec

REPO = Path(__file__).resolve().parent.parent


def lineage(run: Path) -> list[dict]:
    """The run and every run it continues (via ``config.init``), newest first; ``init`` paths recorded relative
    to the repository (the runs write them absolute, which would ship this machine's layout)."""
    out = []
    while run is not None:
        record = json.loads((run / "pretrain.json").read_text())
        config = dict(record["config"])
        init = (REPO / config["init"]).resolve() if config.get("init") else None
        if init is not None and init.is_relative_to(REPO):
            config["init"] = str(init.relative_to(REPO))
        out.append({"run": str(run.relative_to(REPO)), "config": config,
                    "seconds_total": record.get("seconds_total"), "finished": record.get("finished")})
        run = init.parent if init is not None and (init.parent / "pretrain.json").exists() else None
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("file", nargs="?", default="best.pt")
    p.add_argument("--recipe", required=True, help="how the codec was made (commands; the README to read)")
    p.add_argument("--keep-previous-as", required=True, help="DATE of fedcodec/assets/default-DATE/")
    p.add_argument("--rule", default="best steering-validation score (mean BD-rate vs x265 of hospitals 0 and 1, "
                   "seed-5000 phantoms, segmenter task.pt)", help="why this file of the run was chosen")
    args = p.parse_args()
    run = Path(args.run).resolve()
    source = run / args.file
    previous = DEFAULT_DIR.parent / f"default-{args.keep_previous_as}"
    if not previous.exists():
        previous.mkdir()
        for name in ("codec.pt", "metrics.csv", "pretrain.json"):
            shutil.copy2(DEFAULT_DIR / name, previous / name)
    meta = read_codec_file(source)["meta"]
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    selected = {"file": str(source.relative_to(REPO)), "step": meta.get("step", int(rows[-1]["step"])),
                "rule": args.rule, "validation": meta.get("validation")}
    runs = lineage(run)
    # "config" is the last run's (what fedcodec.losses and rate_task read); "lineage" holds every run's
    record = {"recipe": args.recipe, "selected": selected, "config": runs[0]["config"], "lineage": runs,
              "parameter_counts": meta["parameter_counts"]}
    codec = load_codec(source)
    save_codec(codec, DEFAULT_DIR / "codec.pt", meta={"pretrain": record}, overwrite=True)
    (DEFAULT_DIR / "pretrain.json").write_text(json.dumps(record, indent=2) + "\n")
    shutil.copy2(run / "metrics.csv", DEFAULT_DIR / "metrics.csv")
    print(f"shipped {source} as {DEFAULT_DIR / 'codec.pt'} (model id {codec.identity_hash()[:12]}); "
          f"the previous default kept in {previous}")


if __name__ == "__main__":
    main()
