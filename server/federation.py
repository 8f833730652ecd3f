"""The server side of federated few-shot adaptation, as plain functions over a Flower ``Grid``.

:func:`run_federation` is everything the ServerApp does: load the pretrained codec, send only the adaptable
subset (the configured groups) plus the base codec's identity hash, run the rounds with the configured
strategy (validation, optional central DP), checkpoint the subset, the strategy state and the privacy
accountant after every round, resume from a checkpoint, and export the merged adapted codec. It also prints
the per-round table and writes ``metrics.json`` / ``metrics.csv``.

The module reads top to bottom in the order a run happens: :func:`run_federation` tells the whole story in
named steps; below it come the start (output directory, resume), the hospitals and the strategy, the DP
bookkeeping, the round loop (train step, evaluate step), checkpoints, the export, and the table, metrics files
and summary.

Output directory (absolute; default ``~/.fedcodec/runs/<time>-run<id>``)::

    run.json                      settings, base identity, subset and full-codec sizes
    metrics.json, metrics.csv     one row per round (round 0 = the pretrained subset, before adaptation)
    checkpoints/round-NNNN.pt     subset + strategy state + accountant state + history (torch, weights-only)
    checkpoints/latest.pt
    adapted_codec.pt              the base codec with the adapted subset merged (fedcodec codec file)
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.exception import PrivacyBudgetExhausted

from fedcodec import run_config as C
from fedcodec.codec import SemanticCodec
from fedcodec.errors import FedcodecError, ModelFileError, ModelMismatchError, OutputExistsError
from fedcodec.model_io import atomic_write_bytes, load_codec, read_tagged_file, save_codec, write_json
from strategies import (
    StrategySpec,
    SubsetStrategy,
    build_strategy,
    central_dp_noise_scale,
    load_strategy_state,
    privacy_spent,
    strategy_state,
)

log = logging.getLogger("flwr.fedcodec.server")

CHECKPOINT_FORMAT = "fedcodec-fl-checkpoint"
CHECKPOINT_VERSION = 1
RUNS_HOME = Path("~/.fedcodec/runs")


# ---------------------------------------------------------------------------------------------- the run


def run_federation(grid: Grid, run_config: Mapping[str, Any] | None = None, run_id: int = 0) -> dict:
    """Run the whole federated adaptation on ``grid``; returns the summary that is written to metrics.json."""
    rc = dict(run_config or {})
    t_run = time.perf_counter()
    out_dir = resolve_out_dir(C.get(rc, "out-dir"), run_id)
    groups = C.parse_groups(C.get(rc, "groups"))
    model_path = C.get(rc, "model-path").strip()
    codec = load_codec(Path(model_path).expanduser() if model_path else None)
    base_hash = codec.identity_hash(["base"])
    num_rounds = C.get(rc, "num-server-rounds")
    start = resume_point(C.get(rc, "resume-from").strip(), codec, groups, base_hash)
    resuming_here = claim_out_dir(out_dir, start.checkpoint)

    say(f"fedcodec federation: output directory {out_dir}")
    nodes = wait_for_hospitals(grid, C.get(rc, "min-available-hospitals"), C.get(rc, "wait-for-hospitals"))
    spec, strategy = connect_strategy(rc, len(nodes), start.checkpoint)
    run_info = describe_run(rc, run_id, out_dir, model_path, codec, base_hash, groups, spec, len(nodes),
                            num_rounds, start)
    write_json(out_dir / "run.json", run_info)
    announce_run(rc, spec, run_info)

    evaluate_config = {"base-hash": base_hash, "groups": ",".join(groups)}
    fed = Federation(grid=grid, strategy=strategy, out_dir=out_dir, run_info=run_info,
                     evaluate_config=evaluate_config,
                     train_config=train_config(rc, spec, evaluate_config, start.round),
                     timeout=float(C.get(rc, "round-timeout")),
                     meta={"base_hash": base_hash, "groups": list(groups), "run_id": run_id, "strategy": spec.name},
                     rows=start.rows)
    arrays = subset_to_arrays(start.subset)

    say("")
    say(format_header())
    for r in fed.rows:
        say(format_row(r) + "   (from checkpoint)")
    if start.round == 1 and C.get(rc, "evaluate-before") and not fed.rows:
        evaluate_before(fed, arrays)
    arrays, last_round, stop_reason = run_rounds(fed, arrays, start.round, num_rounds)

    export_path = None
    if C.get(rc, "export"):
        export_path = export_codec(codec, arrays_to_subset(arrays), groups, out_dir / "adapted_codec.pt",
                                   meta={**fed.meta, "rounds": last_round, "kind": "federated-adaptation"},
                                   overwrite=resuming_here)
    summary = summarize(fed.rows, run_info, strategy, stop_reason, export_path, time.perf_counter() - t_run)
    write_metrics(out_dir, run_info, fed.rows, summary)
    say("")
    say(summary_text(summary))
    return summary


# ---------------------------------------------------------------------------------------------- start


def resolve_out_dir(value: str, run_id: int) -> Path:
    """The absolute output directory (``""`` -> ``~/.fedcodec/runs/<time>-run<id>``)."""
    if not value.strip():
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        return (RUNS_HOME / f"{stamp}-run{run_id}").expanduser().resolve()
    p = Path(value.strip()).expanduser()
    if not p.is_absolute():
        raise FedcodecError(f"out-dir must be an absolute path, got {value!r} (the ServerApp runs in the "
                            "SuperLink's working directory, so a relative path would land somewhere unexpected)")
    return p.resolve()


@dataclass
class StartPoint:
    """Where a run starts: round 1 from the pretrained subset, or the round after a checkpoint's."""

    subset: dict[str, torch.Tensor]      # the adaptable subset sent in the first round
    round: int = 1                       # the first round to run
    rows: list[dict] = field(default_factory=list)   # the checkpoint's history (its rows are kept)
    checkpoint: dict | None = None       # the checkpoint resumed from (load_checkpoint), if any


def resume_point(resume_from: str, codec: SemanticCodec, groups: tuple[str, ...], base_hash: str) -> StartPoint:
    """Start from the codec's subset, or resume from ``resume_from`` (a checkpoint or a run directory)."""
    subset = codec.group_state_dict(groups)
    if not resume_from:
        return StartPoint(subset)
    ckpt = load_checkpoint(resume_from)
    check_resumable(ckpt, codec, groups, base_hash)
    return StartPoint(subset={k: ckpt["subset"][k].clone() for k in subset}, round=int(ckpt["round"]) + 1,
                      rows=list(ckpt["history"]), checkpoint=ckpt)


def check_resumable(ckpt: Mapping[str, Any], codec: SemanticCodec, groups: tuple[str, ...], base_hash: str) -> None:
    """A checkpoint resumes only the same base codec and groups, with a subset the codec accepts."""
    meta = ckpt["meta"]
    if meta.get("base_hash") != base_hash:
        raise ModelMismatchError(f"checkpoint {ckpt['path']} was made for base codec "
                                 f"{str(meta.get('base_hash'))[:16]}..., the configured codec is "
                                 f"{base_hash[:16]}...")
    if tuple(meta.get("groups", ())) != groups:
        raise FedcodecError(f"checkpoint groups {meta.get('groups')} differ from the configured {list(groups)}")
    probe = codec.group_state_dict(groups)
    codec.load_group_state_dict(ckpt["subset"], groups)   # validates keys/shapes/finite values
    codec.load_group_state_dict(probe, groups)           # keep the base codec pristine


def claim_out_dir(out_dir: Path, ckpt: Mapping[str, Any] | None) -> bool:
    """Create ``out_dir``, refusing one that holds another run; True when this run resumes a checkpoint of its
    own output directory (its files are then continued and the exported codec replaced)."""
    resuming_here = bool(ckpt) and Path(ckpt["path"]).is_relative_to(out_dir)
    if (out_dir / "metrics.json").exists() and not resuming_here:
        raise OutputExistsError(f"{out_dir} already holds a federation run; choose another out-dir or resume "
                                "from it (resume-from)")
    out_dir.mkdir(parents=True, exist_ok=True)
    return resuming_here


# ---------------------------------------------------------------------------------------------- hospitals and strategy


def wait_for_hospitals(grid: Grid, needed: int, timeout: float, settle: float = 0.5) -> list[int]:
    """Wait until ``needed`` hospitals are connected; fail with a hint after ``timeout`` seconds.

    Once enough are there, wait until the count has not grown for ``settle`` seconds (at most 10 s more), so
    that per-round sample sizes are computed from every hospital that is connecting (a simulation registers its
    SuperNodes while the ServerApp starts; with 1,000 of them round 1 would otherwise sample from a few).
    """
    deadline = time.monotonic() + timeout
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= needed:
            stable_since, settle_end = time.monotonic(), time.monotonic() + 10.0
            while settle > 0 and time.monotonic() - stable_since < settle and time.monotonic() < settle_end:
                time.sleep(min(0.25, settle))
                now = list(grid.get_node_ids())
                if len(now) != len(nodes):
                    nodes, stable_since = now, time.monotonic()
            return nodes
        if time.monotonic() > deadline:
            raise FedcodecError(
                f"only {len(nodes)} hospital(s) connected after {timeout:.0f} s, this run needs "
                f"min-available-hospitals = {needed}. In simulation start enough SuperNodes: flwr run . "
                f"--federation-config \"num-supernodes={needed} client-resources-num-cpus=1\" (or lower "
                "min-available-hospitals, min-train-hospitals and min-evaluate-hospitals with --run-config)")
        time.sleep(0.5)


def strategy_spec(rc: Mapping[str, Any], num_nodes: int) -> StrategySpec:
    """The StrategySpec of the run config, with the per-round sample sizes fixed for ``num_nodes`` hospitals."""
    frac_t, frac_e = C.get(rc, "fraction-train"), C.get(rc, "fraction-evaluate")
    n_train = min(num_nodes, max(int(num_nodes * frac_t), C.get(rc, "min-train-hospitals"))) if frac_t > 0 else 0
    central = C.get(rc, "central-dp.enabled")
    return StrategySpec(
        name=C.get(rc, "strategy"), fraction_train=frac_t, fraction_evaluate=frac_e,
        min_train_nodes=C.get(rc, "min-train-hospitals"), min_evaluate_nodes=C.get(rc, "min-evaluate-hospitals"),
        min_available_nodes=C.get(rc, "min-available-hospitals"),
        # Central DP accounting needs exactly the same number of hospitals every round; otherwise FedAvg's
        # sampling adapts to the hospitals connected at that moment (one that goes offline is not waited for).
        fixed_train_size=(n_train or None) if central else None, fixed_evaluate_size=None,
        proximal_mu=C.get(rc, "proximal-mu"), fedadam_eta=C.get(rc, "fedadam.eta"),
        fedadam_beta_1=C.get(rc, "fedadam.beta-1"), fedadam_beta_2=C.get(rc, "fedadam.beta-2"),
        fedadam_tau=C.get(rc, "fedadam.tau"), trimmed_beta=C.get(rc, "trimmed-mean.beta"),
        krum_num_malicious=C.get(rc, "krum.num-malicious"), max_update_norm=C.get(rc, "max-update-norm") or None,
        # No hospital can claim more examples than the configured shots (a reply's weight is capped there).
        max_examples=max(1, C.get(rc, "shots")),
        central_dp=central, dp_noise_multiplier=C.get(rc, "central-dp.noise-multiplier"),
        dp_clipping_norm=C.get(rc, "central-dp.clipping-norm"), dp_delta=C.get(rc, "central-dp.delta"),
        dp_max_epsilon=C.get(rc, "central-dp.max-epsilon") or None, dp_population=num_nodes)


def connect_strategy(rc: Mapping[str, Any], num_nodes: int,
                     ckpt: Mapping[str, Any] | None) -> tuple[StrategySpec, SubsetStrategy]:
    """The configured strategy for ``num_nodes`` connected hospitals, with the checkpoint's strategy state
    (FedAdam moments, the central-DP accountant) when resuming."""
    spec = strategy_spec(rc, num_nodes)
    if ckpt:
        keep_dp_population(spec, ckpt)
    strategy = build_strategy(spec)
    if ckpt and ckpt.get("strategy"):
        load_strategy_state(strategy, ckpt["strategy"])
    return spec, strategy


def describe_run(rc: Mapping[str, Any], run_id: int, out_dir: Path, model_path: str, codec: SemanticCodec,
                 base_hash: str, groups: tuple[str, ...], spec: StrategySpec, num_nodes: int, num_rounds: int,
                 start: StartPoint) -> dict:
    """``run.json``: settings, base identity, subset and full-codec sizes (and the central-DP noise scale)."""
    ckpt = start.checkpoint
    run_info = {
        "run_id": run_id, "out_dir": str(out_dir), "model_path": model_path or "<embedded default>",
        "base_hash": base_hash, "groups": list(groups), "strategy": spec.name, "hospitals_connected": num_nodes,
        "hospitals_per_round": spec.fixed_train_size or max(int(num_nodes * spec.fraction_train),
                                                            spec.min_train_nodes),
        "num_rounds": num_rounds, "start_round": start.round,
        "resumed_from": ckpt["path"] if ckpt else "", "parameter_counts": codec.parameter_counts(),
        "subset_parameters": int(sum(v.numel() for v in start.subset.values())),
        "subset_state_bytes": state_dict_bytes(start.subset),
        "full_codec_state_bytes": state_dict_bytes(codec.state_dict()),
        "central_dp": spec.central_dp, "sample_dp": C.get(rc, "sample-dp.enabled"),
        "run_config": {k: rc.get(k, v) for k, v in C.DEFAULTS.items()},
    }
    if spec.central_dp:
        run_info["central_dp_noise"] = central_dp_noise_scale(
            spec.dp_noise_multiplier, spec.dp_clipping_norm, run_info["hospitals_per_round"],
            run_info["subset_parameters"])
    return run_info


def announce_run(rc: Mapping[str, Any], spec: StrategySpec, run_info: Mapping[str, Any]) -> None:
    """Print who is connected, what is sent and, with DP, how much noise to expect."""
    subset_raw, full_bytes = run_info["subset_state_bytes"], run_info["full_codec_state_bytes"]
    say(f"fedcodec federation: {run_info['hospitals_connected']} hospital(s) connected, strategy {spec.name}, "
        f"groups {','.join(run_info['groups'])}, subset {run_info['subset_parameters']} parameters = "
        f"{subset_raw / 1024:.1f} KB ({100 * subset_raw / full_bytes:.2f}% of the full codec's "
        f"{full_bytes / 1024:.0f} KB), base {run_info['base_hash'][:16]}...")
    announce_privacy(rc, spec, run_info)


# ---------------------------------------------------------------------------------------------- DP bookkeeping


def keep_dp_population(spec: StrategySpec, ckpt: Mapping[str, Any]) -> None:
    """On resume with central DP, keep the population the accountant was built with.

    The accountant's ledger loads only into an accountant of the same privacy configuration, whose population
    is the number of hospitals connected when the run first started; after a restart another number may be
    connected. Keep that population, and sample at most that many hospitals per round (NO_AMPLIFICATION
    accounting does not depend on the population, but an event may not sample more than it).
    """
    state = (ckpt.get("strategy") or {}).get("accountant")
    if not spec.central_dp or not state:
        return   # load_strategy_state says what is missing
    population = int(json.loads(state)["config"]["population_size"])
    spec.dp_population = population
    if spec.fixed_train_size and spec.fixed_train_size > population:
        log.warning("central DP resume: %d hospitals would be sampled per round, but the accountant was built for "
                    "a federation of %d; sampling %d", spec.fixed_train_size, population, population)
        spec.fixed_train_size = population


def announce_privacy(rc: Mapping[str, Any], spec: StrategySpec, run_info: Mapping[str, Any]) -> None:
    """Print the central-DP settings and noise scale (warning when the noise outweighs any update) and the
    sample-level DP-SGD settings of the hospitals."""
    if spec.central_dp:
        say(f"fedcodec federation: central DP on (noise multiplier {spec.dp_noise_multiplier}, clipping norm "
            f"{spec.dp_clipping_norm}, delta {spec.dp_delta}, budget {spec.dp_max_epsilon or 'none'})")
        scale = run_info["central_dp_noise"]
        say(f"fedcodec federation: central DP noise std {scale['noise_std_per_coordinate']:.4g} per coordinate, "
            f"expected noise norm {scale['noise_to_update_ratio']:.2f}x the clipping norm on the mean update of "
            f"{run_info['hospitals_per_round']} hospital(s)")
        if scale["noise_to_update_ratio"] > 1.0:
            log.warning("central DP: the noise on the mean update is %.1fx larger than the largest possible update "
                        "(%d hospitals per round, %d subset parameters); expect the adapted codec to degrade. About "
                        "%d hospitals per round would bring it to 1x at this noise multiplier.",
                        scale["noise_to_update_ratio"], run_info["hospitals_per_round"],
                        run_info["subset_parameters"], scale["hospitals_for_ratio_1"])
    if C.get(rc, "sample-dp.enabled"):
        say(f"fedcodec federation: sample-level DP-SGD on at every hospital (noise multiplier "
            f"{C.get(rc, 'sample-dp.noise-multiplier')}, max grad norm {C.get(rc, 'sample-dp.max-grad-norm')}, "
            f"delta {C.get(rc, 'sample-dp.delta')})")


def train_config(rc: Mapping[str, Any], spec: StrategySpec, evaluate_config: Mapping[str, Any],
                 start_round: int) -> dict:
    """The config of every train message: the evaluate config, equal weights under central DP (one hospital,
    one vote) and, on resume with sample-level DP, how many rounds each hospital's accountant already holds."""
    config = dict(evaluate_config, **{"equal-weights": bool(spec.central_dp)})
    if C.get(rc, "sample-dp.enabled") and start_round > 1:
        config["sample-dp.prior-rounds"] = start_round - 1
    return config


# ---------------------------------------------------------------------------------------------- round loop


@dataclass
class Federation:
    """What every round needs, gathered once before the first."""

    grid: Grid
    strategy: SubsetStrategy
    out_dir: Path
    run_info: dict
    evaluate_config: dict    # base hash and groups: sent with every message
    train_config: dict       # see train_config()
    timeout: float           # seconds to wait for a round's replies
    meta: dict               # saved with every checkpoint
    rows: list[dict]         # one per round (a resumed run's checkpoint history first)


def run_rounds(fed: Federation, arrays: ArrayRecord, start_round: int,
               num_rounds: int) -> tuple[ArrayRecord, int, str]:
    """Rounds ``start_round..num_rounds``: train, evaluate, report, checkpoint.

    Returns the final subset, the last round completed and why the loop stopped early ("" if it did not: only
    central DP stops it, when the next round would exceed the privacy budget).
    """
    last_round = start_round - 1
    for server_round in range(start_round, num_rounds + 1):
        t0 = time.perf_counter()
        try:
            messages = list(fed.strategy.configure_train(server_round, arrays, ConfigRecord(dict(fed.train_config)),
                                                         fed.grid))
        except PrivacyBudgetExhausted as exc:
            stop_reason = f"privacy budget reached before round {server_round}: {exc}"
            say(f"fedcodec federation: stopping: {stop_reason}")
            return arrays, last_round, stop_reason
        arrays, train_metrics = train_step(fed, server_round, arrays, messages)
        eval_metrics = evaluate_step(fed, server_round, arrays)
        row = make_row(server_round, fed.strategy, train_metrics, eval_metrics, time.perf_counter() - t0)
        fed.rows.append(row)
        last_round = server_round
        report_round(row)
        checkpoint_round(fed, server_round, arrays)
    return arrays, last_round, ""


def train_step(fed: Federation, server_round: int, arrays: ArrayRecord,
               messages: list[Message]) -> tuple[ArrayRecord, MetricRecord | None]:
    """Send the configured train messages and aggregate the replies; the subset stays as it was when the round
    produced no (valid) aggregate."""
    replies = fed.grid.send_and_receive(messages, timeout=fed.timeout) if messages else []
    new_arrays, metrics = fed.strategy.aggregate_train(server_round, replies)
    return (new_arrays if new_arrays is not None else arrays), metrics


def evaluate_step(fed: Federation, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
    """Evaluate ``arrays`` on the sampled hospitals' held-out images (None when none is asked or answers)."""
    msgs = list(fed.strategy.configure_evaluate(server_round, arrays, ConfigRecord(dict(fed.evaluate_config)),
                                                fed.grid))
    if not msgs:
        return None
    return fed.strategy.aggregate_evaluate(server_round, fed.grid.send_and_receive(msgs, timeout=fed.timeout))


def evaluate_before(fed: Federation, arrays: ArrayRecord) -> None:
    """Round 0: the pretrained subset, evaluated before any adaptation."""
    t0 = time.perf_counter()
    em = evaluate_step(fed, 0, arrays)
    fed.rows.append(make_row(0, fed.strategy, None, em, time.perf_counter() - t0))
    say(format_row(fed.rows[-1]))
    write_metrics(fed.out_dir, fed.run_info, fed.rows, {})


def report_round(row: Mapping[str, Any]) -> None:
    """The round's table row, then one line per dropped update and per failed hospital."""
    say(format_row(row) + (f"   {row['skipped_reason']}" if row["skipped_reason"] else ""))
    for rej in row["rejections"]:
        say(f"      dropped the update of node {rej['node']}: {rej['reason']}")
    for fail in row["failures"]:
        say(f"      node {fail['node']} failed: {fail['reason']}")


# ---------------------------------------------------------------------------------------------- checkpoints


def checkpoint_round(fed: Federation, server_round: int, arrays: ArrayRecord) -> Path:
    """After a round: write ``checkpoints/round-NNNN.pt``, make it ``latest.pt`` and rewrite the metrics files."""
    path = save_checkpoint(fed.out_dir / "checkpoints" / f"round-{server_round:04d}.pt", server_round,
                           arrays_to_subset(arrays), fed.strategy, fed.rows, fed.meta)
    rotate_latest(path)
    write_metrics(fed.out_dir, fed.run_info, fed.rows, {})
    return path


def rotate_latest(path: Path) -> None:
    """Replace ``latest.pt`` beside ``path`` with a copy of it (through a temporary file, so that ``latest.pt``
    is always a complete checkpoint)."""
    tmp = path.parent / ".latest.tmp"
    shutil.copyfile(path, tmp)
    tmp.replace(path.parent / "latest.pt")


def save_checkpoint(path: Path, server_round: int, subset: Mapping[str, torch.Tensor], strategy: SubsetStrategy,
                    history: list[dict], meta: Mapping[str, Any]) -> Path:
    """Write one round's checkpoint atomically (loadable with ``torch.load(weights_only=True)``)."""
    st = strategy_state(strategy)
    st_t: dict[str, Any] = {"name": st["name"]}
    for attr in ("m_t", "v_t"):
        if attr in st:
            st_t[attr] = {k: torch.from_numpy(np.array(v)) for k, v in st[attr].items()}
    if "accountant" in st:
        st_t["accountant"] = st["accountant"]
    payload = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "round": int(server_round),
               "subset": {k: v.detach().cpu().clone() for k, v in subset.items()}, "strategy": st_t,
               "history": json.dumps(history), "meta": json.dumps(dict(meta))}
    buf = io.BytesIO()
    torch.save(payload, buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the newest checkpoint of a run's output directory.

    In a directory the highest-numbered ``round-NNNN.pt`` wins over ``latest.pt``: a server killed between
    writing a round's checkpoint and replacing ``latest.pt`` leaves ``latest.pt`` a round behind (or absent
    after round 1), while every ``round-NNNN.pt`` is complete (written to a temporary file, then renamed).
    """
    p = Path(path).expanduser()
    if p.is_dir():
        for folder in (p / "checkpoints", p):
            rounds = [(int(f.stem[6:]), f) for f in folder.glob("round-*.pt")
                      if f.stem[6:].isdigit() and f.is_file()]
            if rounds:
                return max(rounds)[1].resolve()
            if (folder / "latest.pt").is_file():
                return (folder / "latest.pt").resolve()
        raise ModelFileError(f"{p}: no checkpoints/round-NNNN.pt or checkpoints/latest.pt in this run directory")
    if not p.is_file():
        raise ModelFileError(f"checkpoint not found: {p}")
    return p.resolve()


def load_checkpoint(path: str | Path) -> dict:
    """Read and check a checkpoint; ``history`` and ``meta`` come back decoded."""
    p = find_checkpoint(path)
    payload = read_tagged_file(p, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, "federation checkpoint")
    payload["history"] = json.loads(payload["history"])
    payload["meta"] = json.loads(payload["meta"])
    payload["path"] = str(p)
    strategy = payload.get("strategy") or {}
    for attr in ("m_t", "v_t"):
        if attr in strategy:
            strategy[attr] = {k: v.numpy() for k, v in strategy[attr].items()}
    return payload


# ---------------------------------------------------------------------------------------------- export


def export_codec(codec: SemanticCodec, subset: Mapping[str, torch.Tensor], groups: tuple[str, ...], path: Path,
                 meta: Mapping[str, Any], overwrite: bool = False) -> Path:
    """Merge the adapted subset into (a copy of) the base codec, rebuild the entropy tables and save it as a
    fedcodec codec file that ``fedcodec encode/decode/evaluate --model`` accept."""
    import copy

    merged = copy.deepcopy(codec)
    merged.load_group_state_dict(dict(subset), groups)
    merged.update(force=True)
    return save_codec(merged.eval(), path, meta=dict(meta), overwrite=overwrite)


# ---------------------------------------------------------------------------------------------- table and metrics files


COLUMNS = [("round", "round", "{:>5}"), ("hosp", "hospitals", "{:>5}"), ("rej", "rejected", "{:>3}"),
           ("fail", "failed", "{:>4}"), ("loss", "train_loss", "{:>7.3f}"), ("bpp(tr)", "train_bpp", "{:>7.4f}"),
           ("bpp", "eval_bpp", "{:>7.4f}"), ("Dice", "eval_dice", "{:>6.3f}"), ("sent KB", "sent_kb", "{:>8.1f}"),
           ("recv KB", "received_kb", "{:>8.1f}"), ("eps(c)", "epsilon_central", "{:>7.2f}"),
           ("eps(s)", "epsilon_sample", "{:>7.2f}"), ("sec", "seconds", "{:>6.1f}")]


def format_row(row: Mapping[str, Any]) -> str:
    cells = []
    for head, key, fmt in COLUMNS:
        width = max(len(head), len(fmt.format(0.0)) if "f" in fmt else len(head))
        value = row.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            cells.append("-".rjust(width))
        else:
            try:
                cells.append(fmt.format(value).rjust(width))
            except (ValueError, TypeError):
                cells.append(str(value).rjust(width))
    return " ".join(cells)


def format_header() -> str:
    cells = []
    for head, _key, fmt in COLUMNS:
        width = max(len(head), len(fmt.format(0.0)) if "f" in fmt else len(head))
        cells.append(head.rjust(width))
    return " ".join(cells)


CSV_KEYS = ["round", "hospitals", "rejected", "failed", "aggregated", "train_loss", "train_bpp", "train_task",
            "train_dice", "eval_bpp", "eval_dice", "eval_psnr", "eval_dice_uncompressed", "bytes_sent",
            "bytes_received", "bytes_sent_train", "bytes_received_train", "bytes_sent_evaluate",
            "bytes_received_evaluate", "subset_bytes_per_client", "epsilon_central", "epsilon_sample", "seconds"]


def write_metrics(out_dir: Path, run_info: Mapping[str, Any], rows: list[dict], summary: Mapping[str, Any]) -> None:
    write_json(out_dir / "metrics.json", {"run": dict(run_info), "rounds": rows, "summary": dict(summary)})
    buf = io.StringIO()
    extra = sorted({k for r in rows for k in r.get("eval_per_quality", {})})
    writer = csv.writer(buf)
    writer.writerow(CSV_KEYS + extra)
    for r in rows:
        writer.writerow([_csv(r.get(k)) for k in CSV_KEYS] + [_csv(r.get("eval_per_quality", {}).get(k))
                                                             for k in extra])
    atomic_write_bytes(out_dir / "metrics.csv", buf.getvalue().encode())


def _csv(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


# ---------------------------------------------------------------------------------------------- rows and summary


def make_row(server_round: int, strategy: SubsetStrategy, train_metrics: Any, eval_metrics: Any,
             seconds: float) -> dict:
    st = strategy.rounds.get(server_round)
    tm = dict(train_metrics) if train_metrics is not None else {}
    em = dict(eval_metrics) if eval_metrics is not None else {}
    spent = privacy_spent(strategy)
    row: dict[str, Any] = {
        "round": server_round,
        "hospitals": st.accepted if st and server_round > 0 else 0,
        "rejected": len(st.rejected) if st else 0,
        "failed": len(st.failed) if st else 0,
        "aggregated": bool(st.aggregated) if st else False,
        "train_loss": tm.get("loss"), "train_bpp": tm.get("bpp"), "train_task": tm.get("task"),
        "train_dice": tm.get("dice"),
        "eval_bpp": em.get("bpp"), "eval_dice": em.get("dice"), "eval_psnr": em.get("psnr"),
        "eval_dice_uncompressed": em.get("dice-uncompressed"),
        "eval_hospitals": int(em.get("clients", 0)) if em else 0,
        "eval_per_quality": {k: float(v) for k, v in em.items() if k.startswith(("bpp-q", "dice-q"))},
        "bytes_sent_train": st.sent_train if st else 0, "bytes_received_train": st.received_train if st else 0,
        "bytes_sent_evaluate": st.sent_evaluate if st else 0,
        "bytes_received_evaluate": st.received_evaluate if st else 0,
        "subset_bytes_per_client": st.subset_bytes_per_client if st else 0,
        "epsilon_central": spent["epsilon"] if spent and spent["releases"] else (0.0 if spent else None),
        "epsilon_sample": tm.get("epsilon") if tm and tm.get("epsilon", 0) > 0 else None,
        "seconds": seconds,
        "rejections": list(st.rejected) if st else [],
        "failures": list(st.failed) if st else [],
        "skipped_reason": st.skipped_reason if st else "",
    }
    row["bytes_sent"] = row["bytes_sent_train"] + row["bytes_sent_evaluate"]
    row["bytes_received"] = row["bytes_received_train"] + row["bytes_received_evaluate"]
    row["sent_kb"] = row["bytes_sent"] / 1024
    row["received_kb"] = row["bytes_received"] / 1024
    return row


def summarize(rows: list[dict], run_info: Mapping[str, Any], strategy: SubsetStrategy, stop_reason: str,
              export_path: Path | None, seconds: float) -> dict:
    trained = [r for r in rows if r["round"] > 0]
    evals = [r for r in rows if r.get("eval_dice") is not None]
    before = next((r for r in evals if r["round"] == 0), None)
    after = evals[-1] if evals and evals[-1]["round"] > 0 else None
    sample_eps = [r["epsilon_sample"] for r in trained if r.get("epsilon_sample") is not None]
    per_client = max((r["subset_bytes_per_client"] for r in trained), default=0)
    full = run_info["full_codec_state_bytes"]
    pick = ("eval_bpp", "eval_dice", "eval_psnr", "eval_dice_uncompressed", "eval_per_quality")
    return {
        "rounds_completed": len(trained), "stop_reason": stop_reason,
        "bytes_per_client_per_round_down": per_client,
        "bytes_per_client_per_round_up": max((r["bytes_received_train"] / (r["hospitals"] + r["rejected"])
                                              for r in trained if r["hospitals"] + r["rejected"]), default=0),
        "full_codec_state_bytes": full,
        "ratio_subset_to_full": per_client / full if full else None,
        "subset_state_bytes": run_info["subset_state_bytes"],
        "ratio_subset_state_to_full": run_info["subset_state_bytes"] / full if full else None,
        "median_round_seconds": float(np.median([r["seconds"] for r in trained])) if trained else None,
        "before": {k: before.get(k) for k in pick} if before else None,
        "after": {k: after.get(k) for k in pick} if after else None,
        "epsilon_central": privacy_spent(strategy),
        "epsilon_sample_max": max(sample_eps) if sample_eps else None,
        "rejected_updates": sum(r["rejected"] for r in trained), "failed_replies": sum(r["failed"] for r in trained),
        "exported_codec": str(export_path) if export_path else "",
        "out_dir": run_info["out_dir"], "seconds": seconds,
    }


def summary_text(s: Mapping[str, Any]) -> str:
    lines = [f"fedcodec federation: {s['rounds_completed']} round(s) in {s['seconds']:.1f} s"
             + (f" (stopped: {s['stop_reason']})" if s["stop_reason"] else "")]
    lines.append(f"  per client and round: {s['bytes_per_client_per_round_down'] / 1024:.1f} KB down "
                 f"({100 * (s['ratio_subset_to_full'] or 0):.2f}% of the full codec's "
                 f"{s['full_codec_state_bytes'] / 1024:.0f} KB), {s['bytes_per_client_per_round_up'] / 1024:.1f} KB up")
    if s["before"] and s["after"]:
        b, a = s["before"], s["after"]
        lines.append(f"  held-out (mean over eval qualities): bpp {b['eval_bpp']:.4f} -> {a['eval_bpp']:.4f}, "
                     f"Dice {b['eval_dice']:.3f} -> {a['eval_dice']:.3f}")
    if s["epsilon_central"]:
        e = s["epsilon_central"]
        lines.append(f"  central DP: epsilon {e['epsilon']:.3f} at delta {e['delta']:g} after {e['releases']} release(s)")
    if s["epsilon_sample_max"] is not None:
        lines.append(f"  sample-level DP: max hospital epsilon {s['epsilon_sample_max']:.3f}")
    if s["rejected_updates"] or s["failed_replies"]:
        lines.append(f"  rejected updates: {s['rejected_updates']}, failed replies: {s['failed_replies']}")
    if s["exported_codec"]:
        lines.append(f"  adapted codec: {s['exported_codec']}")
    lines.append(f"  metrics: {Path(s['out_dir']) / 'metrics.json'}, {Path(s['out_dir']) / 'metrics.csv'}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- helpers


def say(text: str = "") -> None:
    """Print to stdout (captured into the run's log by ``flwr run --stream`` / ``flwr log``)."""
    print(text, flush=True)


def state_dict_bytes(state: Mapping[str, torch.Tensor]) -> int:
    """Raw tensor bytes of a state dict."""
    return int(sum(v.numel() * v.element_size() for v in state.values()))


def subset_to_arrays(subset: Mapping[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord({k: Array(v.detach().cpu().contiguous().numpy()) for k, v in subset.items()})


def arrays_to_subset(arrays: ArrayRecord) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(arrays[k].numpy())) for k in arrays.keys()}
