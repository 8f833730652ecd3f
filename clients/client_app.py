"""The hospital side of the federation: a Flower ClientApp (Message API).

``train``: check that the server's subset was made for the base codec this site holds (the base identity
hash in the ConfigRecord; a mismatch is refused with an error reply saying why), load the subset into the
site's codec, adapt it on the site's K annotated samples with :func:`fedcodec.adapt.adapt` (the same function
as ``fedcodec adapt``), and reply with exactly one ArrayRecord (the subset, same keys and order as received)
and one MetricRecord of scalars. With central DP the ``clipping_norm`` sent by the server makes the
``fixedclipping_mod`` clip the update before it leaves the site; with sample-level DP the Opacus accountant
history is kept in ``context.state`` so epsilon composes across rounds.

``evaluate``: score the site's held-out samples (bpp from real bitstreams, Dice of the frozen task network)
with the received subset.

Device: both handlers run on node config ``device`` (``auto`` | ``cpu`` | ``cuda``), else the run config's
``device`` (default ``auto``: CUDA when the node sees a GPU, else the CPU), resolved by
:func:`fedcodec.pretrain.resolve_device`; ``cuda`` on a node without a GPU is an error reply that says so. In a
Ray simulation a virtual hospital sees a GPU only when it was given a share of one
(``client-resources-num-gpus``).

Simulation only (nodes with a ``partition-id`` and no ``data-dir``): ``sim.dropout`` fails a round,
``sim.straggler`` replies ``sim.straggler-delay`` seconds late, and ``sim.attack`` corrupts the reply of the
``sim.attack-partitions`` (see :func:`clients.site.corrupt`).

Nothing else leaves the site: no pixels, masks, per-sample values, file names or paths (see
tests/test_privacy.py).
"""

from __future__ import annotations

import json
import logging
import time
import traceback
import warnings
from typing import Any

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod

from clients import site
from fedcodec import run_config as C
from fedcodec.errors import FedcodecError

log = logging.getLogger("flwr.fedcodec.clients")
# TorchScript task networks trigger torch's "torch.jit is deprecated" notices in every simulated ClientApp.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")

KEY_CLIPPING_NORM = "clipping_norm"   # flwr.supercore.differential_privacy.KEY_CLIPPING_NORM
DP_STATE_KEY = "fedcodec-sample-dp"
DP_ACCOUNTANT = "rdp"                 # fedcodec.adapt.DPConfig.accountant (the mechanism of its state_dict)
STALE_STATE_KEY = "fedcodec-sim-stale"   # simulation only: the first subset a "stale" attacker received
ERROR_CODE = 2                        # flwr.common.constant.ErrorCode.CLIENT_APP_RAISED_EXCEPTION


class SimulatedDropout(FedcodecError):
    """A simulated hospital leaves this round (simulation scenarios only)."""

    safe_to_send = True


def central_dp_clipping_mod(msg: Message, context: Context, call_next: Any) -> Message:
    """Flower's ``fixedclipping_mod`` when the server asks for clipping (central DP on), else a no-op.

    Flower's mod fails every message without a ``clipping_norm``; this keeps one ClientApp for runs with and
    without central DP.
    """
    configs = list(msg.content.config_records.values())
    if len(configs) == 1 and KEY_CLIPPING_NORM in configs[0]:
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


app = ClientApp()


def _single(records: dict, what: str) -> Any:
    if len(records) != 1:
        raise FedcodecError(f"expected exactly one {what} in the server's message, got {len(records)}")
    return next(iter(records.values()))


def _error_reply(msg: Message, context: Context, exc: BaseException) -> Message:
    """An error reply; the full error stays in the site's log, the server gets a reason without local paths."""
    if not isinstance(exc, FedcodecError):
        log.error("ClientApp failed:\n%s", traceback.format_exc())
    else:
        log.warning("ClientApp refused: %s: %s", type(exc).__name__, exc)
    reason = site.describe_error(exc, context.node_config, context.run_config)
    return Message(Error(code=ERROR_CODE, reason=reason), reply_to=msg)


def _prepare(msg: Message, context: Context) -> tuple:
    """Shared by train and evaluate: config, models with the received subset loaded, data."""
    rc, nc = context.run_config, context.node_config
    site.set_threads(rc)
    config: ConfigRecord = _single(dict(msg.content.config_records), "ConfigRecord")
    arrays: ArrayRecord = _single(dict(msg.content.array_records), "ArrayRecord")
    model_path = site.site_value(nc, rc, "model-path")
    task_path = site.site_value(nc, rc, "task-path")
    codec, site_hash = site.load_site_codec(model_path or None)
    site.check_base(site_hash, str(config.get("base-hash", "")), model_path)
    groups = C.parse_groups(str(config.get("groups", C.get(rc, "groups"))))
    received = {k: torch.from_numpy(arrays[k].numpy().copy()) for k in arrays.keys()}
    codec.load_group_state_dict(received, groups)   # UpdateRejectedError on a bad subset
    task_net = site.load_site_task(task_path or None)
    data = site.load_site_data(nc, rc)
    device = site.site_device(nc, rc)
    return config, codec, task_net, data, groups, received, device


def _dp_history(context: Context, config: ConfigRecord) -> dict | list:
    """This node's Opacus accountant state of earlier rounds of this run (its ``state_dict``: ``history`` and
    ``mechanism``), or a conservative seed on resume; :func:`fedcodec.adapt.adapt` loads it with the
    accountant's ``load_state_dict``."""
    if DP_STATE_KEY in context.state:
        record = context.state[DP_STATE_KEY]
        state = {"history": json.loads(str(record["history"]))}
        if "mechanism" in record:
            state["mechanism"] = str(record["mechanism"])
        return state
    prior = int(config.get("sample-dp.prior-rounds", 0))
    if prior > 0:
        # Resumed run: this node's state is new. Assume it took part in every earlier round (at the configured
        # sample rate), which over-estimates epsilon rather than under-reporting it.
        rc = context.run_config
        return [[C.get(rc, "sample-dp.noise-multiplier"), C.get(rc, "sample-dp.sample-rate"),
                 C.get(rc, "local-steps")] for _ in range(prior)]
    return []


@app.train(mods=[central_dp_clipping_mod])
def train(msg: Message, context: Context) -> Message:
    """Adapt the received subset on this site's K shots and return it with scalar metrics."""
    try:
        rc, nc = context.run_config, context.node_config
        server_round = int(_single(dict(msg.content.config_records), "ConfigRecord").get("server-round", 0))
        if site.sim_dropout(nc, rc, server_round):
            raise SimulatedDropout(f"simulated dropout in round {server_round}")
        config, codec, task_net, data, groups, received, device = _prepare(msg, context)
        history = _dp_history(context, config) if C.get(rc, "sample-dp.enabled") else None
        state, metrics, new_history = site.train_site(
            codec, task_net, data, rc, groups, received, prox_mu=float(config.get("proximal-mu", 0.0)),
            dp_history=history, server_round=server_round, equal_weights=bool(config.get("equal-weights", False)),
            device=device)
        if new_history:
            context.state[DP_STATE_KEY] = ConfigRecord({"history": json.dumps(new_history),
                                                        "mechanism": DP_ACCOUNTANT})
        attack = site.sim_is_attacker(nc, rc)
        if attack:
            stale = None
            if attack == "stale":
                if STALE_STATE_KEY not in context.state:
                    context.state[STALE_STATE_KEY] = ArrayRecord(
                        {k: Array(v.detach().cpu().contiguous().numpy()) for k, v in received.items()})
                kept = context.state[STALE_STATE_KEY]
                stale = {k: torch.from_numpy(kept[k].numpy().copy()) for k in kept.keys()}
            state = site.corrupt(state, received, attack, stale=stale, seed=server_round)
        delay = site.sim_straggler_delay(nc, rc, server_round)
        if delay > 0:
            log.info("simulated straggler: replying %.1f s late in round %d", delay, server_round)
            time.sleep(delay)
        reply_arrays = ArrayRecord({k: Array(state[k].detach().cpu().contiguous().numpy()) for k in received})
        content = RecordDict({"arrays": reply_arrays, "metrics": MetricRecord(metrics)})
        return Message(content=content, reply_to=msg)
    except Exception as exc:  # every failure becomes an error reply with a reason
        return _error_reply(msg, context, exc)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """bpp and Dice of this site's held-out samples with the received subset."""
    try:
        _, codec, task_net, data, _, _, device = _prepare(msg, context)
        metrics = site.evaluate_site(codec, task_net, data, context.run_config, device=device)
        return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
    except Exception as exc:
        return _error_reply(msg, context, exc)
