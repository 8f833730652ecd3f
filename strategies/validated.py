"""A strategy wrapper that validates every reply before the wrapped strategy sees it.

:class:`ValidatedStrategy` sits outermost (around the DP wrapper, if any, and the aggregation strategy):

- ``configure_train`` remembers the subset it sends (the reference for keys, shapes, dtypes and the update
  norm) and counts the bytes of every message;
- ``aggregate_train`` drops each reply that fails :func:`strategies.validation.check_train_reply` (logging
  the node and the reason), passes only the valid ones on, and then checks the aggregate itself (same keys
  and shapes, finite, cast back to the subset's dtypes). If anything is wrong, or too few replies remain, it
  returns ``None`` so that the global subset stays exactly as it was: a bad reply can never corrupt it;
- evaluate replies with non-scalar or non-finite metrics are dropped the same way.

Everything it saw per round (bytes, accepted/rejected/failed replies with reasons) is kept in
:attr:`ValidatedStrategy.rounds` for the server's metrics files.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedcodec.errors import UpdateRejectedError
from strategies.metrics import aggregate_train_metrics
from strategies.validation import (
    arrays_to_numpy,
    check_evaluate_reply,
    check_train_reply,
    check_weight,
    sanitize_reason,
)

log = logging.getLogger("flwr.fedcodec.strategies")


def record_bytes(content: RecordDict) -> int:
    """Serialized size of a message's records (arrays, metrics and configs)."""
    return int(sum(rec.count_bytes() for rec in content.values()))


@dataclass
class RoundStats:
    """What one round's exchanges looked like, as seen by the server."""

    sent_train: int = 0          # bytes in train messages (all nodes)
    received_train: int = 0      # bytes in train replies (all nodes, including rejected ones)
    sent_evaluate: int = 0
    received_evaluate: int = 0
    train_messages: int = 0
    subset_bytes_per_client: int = 0   # bytes of the subset ArrayRecord in one train message
    accepted: int = 0
    rejected: list[dict] = field(default_factory=list)   # {"node", "reason"}
    failed: list[dict] = field(default_factory=list)     # error replies {"node", "reason"}
    evaluate_accepted: int = 0
    evaluate_rejected: list[dict] = field(default_factory=list)
    evaluate_failed: list[dict] = field(default_factory=list)
    aggregated: bool = False
    skipped_reason: str = ""

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class ValidatedStrategy(Strategy):
    """Validate replies, then delegate to ``strategy``.

    Args:
        strategy: the wrapped strategy (a FedAvg-family strategy, optionally inside a DP wrapper).
        max_update_norm: bound on the L2 norm of each client's update (reply minus sent subset);
            ``None`` or 0 = no bound.
        min_valid_replies: aggregate only when at least this many train replies pass validation.
        weight_key: the MetricRecord key used as aggregation weight.
        max_examples: cap on a reply's weight (e.g. the configured shot count), so that no hospital can
            claim more examples than a hospital can have; ``None`` = no cap (the weight is still validated
            as a finite positive integer).
        equal_weights: replace every weight by 1 (required by central DP; one hospital, one vote).
    """

    _errors: list[Message] = []

    def __init__(self, strategy: Strategy, max_update_norm: float | None = None, min_valid_replies: int = 1,
                 weight_key: str = "num-examples", max_examples: int | None = None,
                 equal_weights: bool = False) -> None:
        self.strategy = strategy
        self.max_examples = int(max_examples) if max_examples and max_examples > 0 else None
        self.equal_weights = bool(equal_weights)
        self.sent_nodes: dict[int, set[int]] = {}
        self.max_update_norm = max_update_norm if max_update_norm and max_update_norm > 0 else None
        self.min_valid_replies = max(1, int(min_valid_replies))
        self.weight_key = weight_key
        self.reference: dict[str, np.ndarray] | None = None
        self.rounds: dict[int, RoundStats] = {}

    # ------------------------------------------------------------------ helpers
    def stats(self, server_round: int) -> RoundStats:
        return self.rounds.setdefault(server_round, RoundStats())

    def __repr__(self) -> str:
        return f"ValidatedStrategy({self.strategy!r})"

    def summary(self) -> None:
        log.info("ValidatedStrategy: max update norm %s, min valid replies %d", self.max_update_norm,
                 self.min_valid_replies)
        self.strategy.summary()

    # ------------------------------------------------------------------ train
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.reference = arrays_to_numpy(arrays)
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self.sent_nodes[server_round] = {int(m.metadata.dst_node_id) for m in messages}
        st = self.stats(server_round)
        st.train_messages = len(messages)
        st.sent_train = sum(record_bytes(m.content) for m in messages)
        if messages:
            st.subset_bytes_per_client = int(sum(r.count_bytes() for r in messages[0].content.array_records.values()))
        return messages

    def _screen(self, server_round: int, replies: list[Message], kind: str) -> tuple[list[Message], list[Message]]:
        """Split replies into (content replies, error replies); drop duplicates per node and replies from nodes
        that were not asked this round (logged as rejections); sanitise error reasons."""
        st = self.stats(server_round)
        asked = self.sent_nodes.get(server_round) if kind == "train" else None
        seen: set[int] = set()
        content, errors = [], []
        rejected = st.rejected if kind == "train" else st.evaluate_rejected
        failed = st.failed if kind == "train" else st.evaluate_failed
        for msg in replies:
            node = int(msg.metadata.src_node_id)
            if node in seen:
                rejected.append({"node": node, "reason": "duplicate reply from this node in this round (dropped)"})
                log.warning("round %d: dropped a duplicate %s reply of node %d", server_round, kind, node)
                continue
            seen.add(node)
            if asked is not None and node not in asked:
                rejected.append({"node": node, "reason": "reply from a node that was not sampled this round"})
                log.warning("round %d: dropped a %s reply of node %d, which was not asked", server_round, kind, node)
                continue
            if msg.has_error():
                reason = sanitize_reason(getattr(msg.error, "reason", ""))
                failed.append({"node": node, "reason": reason})
                log.warning("round %d: %s on node %d failed: %s", server_round, kind, node, reason)
                errors.append(msg)
                continue
            content.append(msg)
        return content, errors

    def _set_weight(self, msg: Message) -> None:
        """Validate the reply's weight, then cap it (or make it 1 with equal weights) in place."""
        record = next(iter(msg.content.metric_records.values()))
        value = check_weight(record[self.weight_key], self.weight_key, self.max_examples)
        record[self.weight_key] = 1.0 if self.equal_weights else value

    @staticmethod
    def _consensus(server_round: int, msgs: list[Message], rejected: list[dict]) -> list[Message]:
        """Keep the replies whose metric keys are those of most replies (Flower refuses to aggregate
        MetricRecords with different keys, so one odd reply would otherwise sink the round)."""
        if len(msgs) < 2:
            return msgs
        keysets = [frozenset(next(iter(m.content.metric_records.values())).keys()) for m in msgs]
        counts: dict[frozenset, int] = {}
        for k in keysets:
            counts[k] = counts.get(k, 0) + 1
        best = max(counts, key=lambda k: (counts[k], len(k)))
        keep = []
        for msg, keys in zip(msgs, keysets):
            if keys == best:
                keep.append(msg)
            else:
                node = int(msg.metadata.src_node_id)
                diff = sorted(keys ^ best)[:3]
                rejected.append({"node": node, "reason": f"metric keys differ from the other replies' ({diff})"})
                log.warning("round %d: dropped the reply of node %d: metric keys differ %s", server_round, node, diff)
        return keep

    def _filter_train(self, server_round: int, replies: list[Message]) -> list[Message]:
        st = self.stats(server_round)
        content, self._errors = self._screen(server_round, replies, "train")
        keep = []
        for msg in content:
            node = int(msg.metadata.src_node_id)
            st.received_train += record_bytes(msg.content)
            try:
                if self.reference is None:
                    raise UpdateRejectedError("no subset was sent in this round")
                check_train_reply(msg.content, self.reference, self.max_update_norm, self.weight_key)
                self._set_weight(msg)
            except UpdateRejectedError as exc:
                st.rejected.append({"node": node, "reason": sanitize_reason(exc)})
                log.warning("round %d: dropped the update of node %d: %s", server_round, node, exc)
                continue
            keep.append(msg)
        keep = self._consensus(server_round, keep, st.rejected)
        st.accepted = len(keep)
        return keep

    def _check_aggregate(self, arrays: ArrayRecord) -> ArrayRecord:
        """The aggregate must look exactly like the subset; cast it back to the subset's dtypes."""
        assert self.reference is not None
        if set(arrays.keys()) != set(self.reference):
            raise UpdateRejectedError("aggregate keys differ from the subset")
        out = {}
        for k, ref in self.reference.items():
            value = np.asarray(arrays[k].numpy())
            if value.shape != ref.shape:
                raise UpdateRejectedError(f"aggregate {k}: shape {value.shape}, expected {ref.shape}")
            if not np.isfinite(value).all():
                raise UpdateRejectedError(f"aggregate {k}: contains NaN or infinite values")
            out[k] = Array(np.ascontiguousarray(value.astype(ref.dtype, copy=False)))
        return ArrayRecord(out)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        st = self.stats(server_round)
        valid = self._filter_train(server_round, replies)
        # Error replies are forwarded (the DP wrapper must see them to refuse an incomplete round);
        # rejected ones are dropped.
        forwarded = valid + list(self._errors)
        # Report metrics over every accepted client (Krum, for one, returns only its selected client's).
        metrics = aggregate_train_metrics([m.content for m in valid], self.weight_key) if valid else None
        if len(valid) < self.min_valid_replies:
            st.skipped_reason = (f"only {len(valid)} valid update(s) of {len(replies)} "
                                 f"(need {self.min_valid_replies}); global subset unchanged")
            log.warning("round %d: %s", server_round, st.skipped_reason)
            self._discard_round(server_round)
            return None, metrics
        try:
            arrays, _ = self.strategy.aggregate_train(server_round, forwarded)
        except Exception as exc:  # noqa: BLE001 - whatever a reply provokes, the round goes on
            st.skipped_reason = (f"aggregation failed ({type(exc).__name__}: {sanitize_reason(exc, 200)}); "
                                 "global subset unchanged")
            self._discard_round(server_round)
            log.warning("round %d: %s", server_round, st.skipped_reason)
            return None, metrics
        if arrays is None:
            st.skipped_reason = st.skipped_reason or "the strategy produced no aggregate; global subset unchanged"
            log.warning("round %d: %s", server_round, st.skipped_reason)
            return None, metrics
        try:
            arrays = self._check_aggregate(arrays)
        except UpdateRejectedError as exc:
            st.skipped_reason = f"aggregate rejected ({exc}); global subset unchanged"
            log.warning("round %d: %s", server_round, st.skipped_reason)
            return None, metrics
        st.aggregated = True
        return arrays, metrics

    def _discard_round(self, server_round: int) -> None:
        """Drop a pending DP privacy event when a round is skipped before reaching the DP wrapper.

        Nothing was released, so nothing must be composed; the event must still be removed or the next
        configure of the same round number would fail.
        """
        inner = self.strategy
        # Private: Flower's DP wrapper has no public way to drop the event of a round that released nothing.
        pending = getattr(inner, "_pending_events", None)
        if isinstance(pending, dict):
            pending.pop(server_round, None)

    # ------------------------------------------------------------------ evaluate
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        messages = list(self.strategy.configure_evaluate(server_round, arrays, config, grid))
        self.stats(server_round).sent_evaluate = sum(record_bytes(m.content) for m in messages)
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        st = self.stats(server_round)
        content, _ = self._screen(server_round, list(replies), "evaluate")
        keep = []
        for msg in content:
            node = int(msg.metadata.src_node_id)
            st.received_evaluate += record_bytes(msg.content)
            try:
                check_evaluate_reply(msg.content, self.weight_key)
                self._set_weight(msg)
            except UpdateRejectedError as exc:
                st.evaluate_rejected.append({"node": node, "reason": sanitize_reason(exc)})
                log.warning("round %d: dropped the evaluation of node %d: %s", server_round, node, exc)
                continue
            keep.append(msg)
        keep = self._consensus(server_round, keep, st.evaluate_rejected)
        st.evaluate_accepted = len(keep)
        if not keep:
            return None
        try:
            return self.strategy.aggregate_evaluate(server_round, keep)
        except Exception as exc:  # noqa: BLE001 - an evaluation can never stop the run
            log.warning("round %d: evaluation aggregation failed: %s: %s", server_round, type(exc).__name__,
                        sanitize_reason(exc, 200))
            return None
