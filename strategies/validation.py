"""Server-side validation of client replies: only a well-formed, finite, bounded update may be aggregated.

A train reply is accepted only when it holds exactly one ArrayRecord (the subset) and one MetricRecord
(scalar metrics) and nothing else, and the arrays have exactly the keys, shapes and dtypes of the subset the
server sent, contain only finite values, and the update (reply minus the sent subset) has an L2 norm within
the configured bound. Anything else is rejected with :class:`fedcodec.errors.UpdateRejectedError`, whose
message names the first problem found; the caller drops the reply and logs that reason.

These are plain functions over Flower records and numpy arrays, usable without a running federation.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import numpy as np
from flwr.app import ArrayRecord, MetricRecord, RecordDict

from fedcodec.errors import UpdateRejectedError

__all__ = ["arrays_to_numpy", "check_arrays", "check_metrics", "check_train_reply", "check_evaluate_reply",
           "update_norm", "TRAIN_METRICS", "EVALUATE_METRICS", "check_metric_schema", "check_weight",
           "sanitize_reason"]

#: The metrics a train / evaluate reply may carry: (key pattern, lowest, highest). Anything else (an unknown
#: key, a value out of range) drops the reply before Flower aggregates it, so one hospital can neither inject
#: keys into the aggregate nor move a federated metric by a huge value.
TRAIN_METRICS: tuple[tuple[str, float, float], ...] = (
    ("num-examples", 0.0, math.inf), ("examples", 0.0, 1e6), ("loss", -1e6, 1e6), ("bpp", 0.0, 64.0),
    ("task", 0.0, 1e6), ("dice", 0.0, 1.0), ("epsilon", 0.0, 1e9), ("seconds", 0.0, 1e7),
)
EVALUATE_METRICS: tuple[tuple[str, float, float], ...] = (
    ("num-examples", 0.0, math.inf), ("bpp", 0.0, 64.0), ("dice", 0.0, 1.0), ("psnr", 0.0, 300.0),
    ("dice-uncompressed", 0.0, 1.0), (r"bpp-q\d{1,3}", 0.0, 64.0), (r"dice-q\d{1,3}", 0.0, 1.0),
)
MAX_METRICS = 64
_REASON_CHARS = re.compile(r"[^A-Za-z0-9 _.,:;()\[\]{}'\"=+\-/<>%#@!?*]")


def sanitize_reason(text: object, limit: int = 300) -> str:
    """A client's error reason as it may be stored and printed: one line of plain printable characters,
    at most ``limit`` long (control characters, escape sequences and other bytes become ``?``)."""
    one = " ".join(str(text).split())
    one = _REASON_CHARS.sub("?", one)
    return one if len(one) <= limit else one[:limit - 3] + "..."


def check_weight(value: object, weight_key: str = "num-examples", max_examples: int | None = None) -> float:
    """A reply's example count must be a finite positive integer; returns it capped at ``max_examples``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise UpdateRejectedError(f"weight {weight_key!r} must be a finite number, got {value!r}")
    v = float(value)
    if v < 1 or v != math.floor(v):
        raise UpdateRejectedError(f"weight {weight_key!r} must be a positive integer, got {value!r}")
    return min(v, float(max_examples)) if max_examples else v


def check_metric_schema(record: MetricRecord, schema: tuple[tuple[str, float, float], ...]) -> None:
    """Every key must match the schema and its value lie in the schema's range."""
    if len(record) > MAX_METRICS:
        raise UpdateRejectedError(f"{len(record)} metrics in the reply (at most {MAX_METRICS})")
    for k, v in record.items():
        if not isinstance(k, str) or len(k) > 40:
            raise UpdateRejectedError(f"metric key {sanitize_reason(repr(k), 60)} is not an expected metric")
        for pattern, lo, hi in schema:
            if re.fullmatch(pattern, k):
                if not lo <= float(v) <= hi:
                    raise UpdateRejectedError(f"metric {k!r} = {float(v):.6g} is outside [{lo:g}, {hi:g}]")
                break
        else:
            raise UpdateRejectedError(f"unexpected metric {sanitize_reason(repr(k), 60)}")


def arrays_to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Deserialize an ArrayRecord without modifying it (``to_torch_state_dict`` pops by default)."""
    return {k: record[k].numpy() for k in record.keys()}


def update_norm(arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> float:
    """L2 norm of ``arrays - reference`` over all keys (float64 accumulation)."""
    total = 0.0
    for k, ref in reference.items():
        d = np.asarray(arrays[k], dtype=np.float64) - np.asarray(ref, dtype=np.float64)
        total += float(np.sum(d * d))
    return math.sqrt(total)


def check_arrays(record: ArrayRecord, reference: Mapping[str, np.ndarray],
                 max_update_norm: float | None = None) -> dict[str, np.ndarray]:
    """Validate an ArrayRecord against the reference subset; return its arrays as numpy.

    Raises:
        UpdateRejectedError: missing or unexpected keys, undecodable data, a dtype or shape different from
            the reference, NaN or infinite values, or an update norm above ``max_update_norm``.
    """
    keys = list(record.keys())
    missing = [k for k in reference if k not in record]
    unexpected = [k for k in keys if k not in reference]
    if missing or unexpected:
        raise UpdateRejectedError(f"keys differ from the sent subset: missing {missing[:3]}"
                                  f"{'...' if len(missing) > 3 else ''} ({len(missing)}), unexpected "
                                  f"{unexpected[:3]}{'...' if len(unexpected) > 3 else ''} ({len(unexpected)})")
    out: dict[str, np.ndarray] = {}
    for k, ref in reference.items():
        arr = record[k]
        if str(arr.dtype) != str(ref.dtype):
            raise UpdateRejectedError(f"{k}: dtype {arr.dtype}, expected {ref.dtype}")
        if tuple(arr.shape) != tuple(ref.shape):
            raise UpdateRejectedError(f"{k}: shape {tuple(arr.shape)}, expected {tuple(ref.shape)}")
        try:
            value = arr.numpy()
        except Exception as exc:  # corrupt payload: np.load raises assorted errors
            raise UpdateRejectedError(f"{k}: undecodable array data ({type(exc).__name__})") from exc
        # The Array's metadata could lie about the payload: check the decoded array as well.
        if value.dtype != ref.dtype or value.shape != ref.shape:
            raise UpdateRejectedError(f"{k}: payload is {value.dtype}{tuple(value.shape)}, expected "
                                      f"{ref.dtype}{tuple(ref.shape)}")
        if not np.isfinite(value).all():
            raise UpdateRejectedError(f"{k}: contains NaN or infinite values")
        out[k] = value
    if max_update_norm is not None and max_update_norm > 0:
        norm = update_norm(out, reference)
        if not norm <= max_update_norm:
            raise UpdateRejectedError(f"update norm {norm:.4g} exceeds the bound {max_update_norm:.4g}")
    return out


def check_metrics(record: MetricRecord, weight_key: str = "num-examples",
                  required: tuple[str, ...] = ()) -> None:
    """Scalar, finite metrics only (no lists: they could carry per-sample values); a positive weight."""
    for k, v in record.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise UpdateRejectedError(f"metric {k!r} is a {type(v).__name__}, only scalar metrics are accepted")
        if not math.isfinite(float(v)):
            raise UpdateRejectedError(f"metric {k!r} is not finite ({v})")
    for k in (weight_key, *required):
        if k not in record:
            raise UpdateRejectedError(f"metric {k!r} is missing")
    if not float(record[weight_key]) > 0:
        raise UpdateRejectedError(f"weight {weight_key!r} must be positive, got {record[weight_key]}")


def _single_records(content: RecordDict, need_arrays: bool) -> tuple[ArrayRecord | None, MetricRecord]:
    arrays = dict(content.array_records)
    metrics = dict(content.metric_records)
    configs = dict(content.config_records)
    if configs:
        raise UpdateRejectedError(f"unexpected ConfigRecord(s) {sorted(configs)} in the reply")
    if need_arrays and len(arrays) != 1:
        raise UpdateRejectedError(f"expected exactly one ArrayRecord, got {len(arrays)}")
    if not need_arrays and arrays:
        raise UpdateRejectedError(f"unexpected ArrayRecord(s) {sorted(arrays)} in an evaluate reply")
    if len(metrics) != 1:
        raise UpdateRejectedError(f"expected exactly one MetricRecord, got {len(metrics)}")
    return (next(iter(arrays.values())) if arrays else None), next(iter(metrics.values()))


def check_train_reply(content: RecordDict, reference: Mapping[str, np.ndarray],
                      max_update_norm: float | None = None, weight_key: str = "num-examples",
                      schema: tuple[tuple[str, float, float], ...] | None = TRAIN_METRICS) -> dict[str, np.ndarray]:
    """Validate a whole train reply; returns the decoded arrays. Raises :class:`UpdateRejectedError`."""
    arrays, metrics = _single_records(content, need_arrays=True)
    check_metrics(metrics, weight_key)
    check_weight(metrics[weight_key], weight_key)
    if schema is not None:
        check_metric_schema(metrics, schema)
    return check_arrays(arrays, reference, max_update_norm)


def check_evaluate_reply(content: RecordDict, weight_key: str = "num-examples",
                         schema: tuple[tuple[str, float, float], ...] | None = EVALUATE_METRICS) -> None:
    """Validate an evaluate reply: exactly one MetricRecord of finite scalars in the schema."""
    _, metrics = _single_records(content, need_arrays=False)
    check_metrics(metrics, weight_key)
    check_weight(metrics[weight_key], weight_key)
    if schema is not None:
        check_metric_schema(metrics, schema)
