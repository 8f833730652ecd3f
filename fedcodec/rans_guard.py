"""Entropy decoding that no payload can crash: CompressAI's rANS decoder, run in a helper process.

Two forms: :func:`decode_with_indexes` for one string of one part (CompressAI's entropy models, bitstream
versions 1-2), and :class:`GuardedStream` for one stream of several parts read in turn (version 3: the
hyper-latent, then the latent).

CompressAI's C++ ``RansDecoder.decode_with_indexes`` trusts its input: its read pointer has no bound, so a
forged string (valid header, recomputed CRC, random payload) can make it read past the end of its buffer
and crash the whole process (SIGSEGV), and the number of words one "bypass" symbol reads is not bounded by
the number of symbols, so no padding of the string makes it safe in-process. fedcodec therefore runs every
decode of an untrusted string in a small, long-lived helper process that loads only CompressAI's ``ans``
extension (no torch; it starts in about 0.1 s, once per process) and:

1. decodes the string (padded with zeros, so most garbage ends in step 2 rather than in a crash);
2. checks that the decoded symbols are *canonical*: that encoding them again with the same tables gives
   back exactly the received string. Every string fedcodec's encoder writes passes; random or edited
   payloads, trailing garbage and truncations do not. (Values whose re-encoding could overflow the encoder's
   own buffer, or whose bypass code is out of range, are refused before re-encoding: no encoder could have
   written them.)

A crash, a hang (``timeout``), or a non-canonical string all raise :class:`fedcodec.errors.BitstreamError` in
the caller, whose process is never at risk; a crashed helper is restarted on the next call. Requests are
serialised by a lock, so threads can share it.

Use :func:`guarded_entropy_coders` around any CompressAI ``decompress`` call on bytes that crossed a network.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence

import numpy as np

from fedcodec.errors import BitstreamError

#: Zero bytes appended to the string inside the helper (keeps most over-reads of garbage in bounds).
PAD_BYTES = 1 << 16
#: Seconds allowed per call: a base plus a per-symbol allowance (the C++ decoder does ~20 M symbols/s).
TIMEOUT_BASE_S = 20.0
TIMEOUT_PER_SYMBOL_S = 2e-6
#: Address-space limit of the helper (a decode of the largest allowed latent needs well under 1 GiB).
HELPER_MEMORY_BYTES = 3 << 30
#: Decoded values (minus the table offset) beyond this are refused without re-encoding (the encoder's
#: bypass code would overflow int32 on them; real latents are a few hundred at most).
MAX_ABS_VALUE = 1 << 24
#: Table sets the helper keeps; when it holds this many it forgets them all before taking a new one, and the
#: caller mirrors that rule (so it always re-sends a table the helper has forgotten).
MAX_TABLES = 16

_HELPER_SOURCE = r"""
import importlib.machinery, importlib.util, pickle, resource, struct, sys
import numpy as np

path, mem = sys.argv[1], int(sys.argv[2])
try:
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
except (ValueError, OSError):
    pass
loader = importlib.machinery.ExtensionFileLoader("ans", path)
spec = importlib.util.spec_from_file_location("ans", path, loader=loader)
ans = importlib.util.module_from_spec(spec)
loader.exec_module(ans)
dec, enc = ans.RansDecoder(), ans.RansEncoder()
inp, out = sys.stdin.buffer, sys.stdout.buffer
tables = {}
pad = bytes(int(sys.argv[3]))
max_abs = int(sys.argv[4])


def read_exact(n):
    buf = bytearray()
    while len(buf) < n:
        chunk = inp.read(n - len(buf))
        if not chunk:
            sys.exit(0)
        buf += chunk
    return bytes(buf)


def bypass_puts(values, idx, np_sizes, np_offsets):
    # bypass nibbles rANS writes for these values, or None when one is out of any encoder's range
    v = np.asarray(values, dtype=np.int64) - np_offsets[idx]
    maxv = np_sizes[idx] - 2
    if v.size and int(np.abs(v).max()) > max_abs:
        return None
    byp = (v < 0) | (v >= maxv)
    raw = np.where(v < 0, -2 * v - 1, 2 * (v - maxv))[byp]
    nib = np.zeros(raw.shape, np.int64)
    r = raw.copy()
    while r.any():
        nib += r != 0
        r >>= 4
    return int((nib + nib // 15 + 1).sum())


def fits(n_symbols, puts):
    # rANS writes at most (information bits + 64) / 32 words: 16 bits per symbol, 4 per bypass nibble.
    # The encoder's buffer holds one word per symbol; a stream needing more was never written by it.
    return (16 * n_symbols + 4 * puts) // 32 + 8 <= n_symbols


def canonical(string, values, idx, cdfs, sizes, offsets, np_sizes, np_offsets):
    puts = bypass_puts(values, idx, np_sizes, np_offsets)
    if puts is None or not fits(len(values), puts):
        return False
    return enc.encode_with_indexes(values, idx.tolist(), cdfs, sizes, offsets) == string


def canonical_stream(string, parts):
    # whether encoding every part's symbols in order into one stream gives back exactly the string
    n = sum(len(values) for values, _, _ in parts)
    puts = 0
    for values, idx, table in parts:
        p = bypass_puts(values, idx, table[3], table[4])
        if p is None:
            return False
        puts += p
    if not fits(n, puts):
        return False
    benc = ans.BufferedRansEncoder()
    for values, idx, table in parts:
        benc.encode_with_indexes(values, idx.tolist(), *table[:3])
    return benc.flush() == string


sdec, session = ans.RansDecoder(), None
while True:
    (n,) = struct.unpack("<Q", read_exact(8))
    req = pickle.loads(read_exact(n))
    key = req["key"]
    if req.get("tables") is not None:
        if len(tables) >= __MAX_TABLES__:
            tables.clear()   # a stream being read keeps its parts' tables (below)
        cdfs, sizes, offsets = req["tables"]
        tables[key] = (cdfs, sizes, offsets, np.asarray(sizes, np.int64), np.asarray(offsets, np.int64))
    cdfs, sizes, offsets, np_sizes, np_offsets = tables[key]
    idx = np.frombuffer(req["indexes"], dtype=np.int32)
    op = req.get("op", "decode")
    if op == "decode":
        string = req["string"]
        values = dec.decode_with_indexes(string + pad, idx.tolist(), cdfs, sizes, offsets)
        ok = canonical(string, values, idx, cdfs, sizes, offsets, np_sizes, np_offsets)
    else:   # "start" a stream (with its string) or read its "next" part; the "last" part is checked whole
        if op == "start":
            session = {"string": req["string"], "parts": []}
            sdec.set_stream(req["string"] + pad)
        if session is None:
            values, ok = [0] * len(idx), False
        else:
            values = sdec.decode_stream(idx.tolist(), cdfs, sizes, offsets)
            session["parts"].append((values, idx, tables[key]))
            ok = bypass_puts(values, idx, np_sizes, np_offsets) is not None
            if req.get("last"):
                ok = ok and canonical_stream(session["string"], session["parts"])
                session = None
    body = np.asarray(values, dtype=np.int32).tobytes()
    out.write(struct.pack("<BQ", int(ok), len(values)) + body)
    out.flush()
""".replace("__MAX_TABLES__", str(MAX_TABLES))


def _ans_path() -> str:
    import importlib.util

    spec = importlib.util.find_spec("compressai.ans")
    if spec is None or not spec.origin:
        raise RuntimeError("compressai's rANS extension (compressai.ans) is not installed")
    return spec.origin


class _Helper:
    """One helper process and the table keys it holds."""

    def __init__(self) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _HELPER_SOURCE, _ans_path(), str(HELPER_MEMORY_BYTES), str(PAD_BYTES),
             str(MAX_ABS_VALUE)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, close_fds=True)
        self.keys: set[bytes] = set()
        self.owner = os.getpid()

    def alive(self) -> bool:
        if os.getpid() != self.owner:  # a forked child shares its parent's helper but cannot wait for it
            try:
                os.kill(self.proc.pid, 0)
                return True
            except OSError:
                return False
        return self.proc.poll() is None

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=5)
        for f in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(Exception):
                f.close()

    def _read(self, n: int, deadline: float) -> bytes:
        fd = self.proc.stdout.fileno()
        buf = bytearray()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, min(n - len(buf), 1 << 20))
            if not chunk:
                raise EOFError
            buf += chunk
        return bytes(buf)

    def request(self, payload: dict, n_symbols: int) -> tuple[bool, np.ndarray]:
        data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
        self.proc.stdin.write(struct.pack("<Q", len(data)) + data)
        self.proc.stdin.flush()
        deadline = time.monotonic() + TIMEOUT_BASE_S + TIMEOUT_PER_SYMBOL_S * n_symbols
        ok, count = struct.unpack("<BQ", self._read(9, deadline))
        if count != n_symbols:
            raise EOFError
        values = np.frombuffer(self._read(4 * count, deadline), dtype=np.int32)
        return bool(ok), values


_LOCK = threading.Lock()
_HELPER: _Helper | None = None
#: How many times a helper died or hung on a payload (for tests and the fuzz script).
stats = {"crashed": 0, "timed_out": 0, "non_canonical": 0, "calls": 0}


def _table_key(rows: list[np.ndarray], sizes: np.ndarray, offsets: np.ndarray) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for a in (*rows, sizes, offsets):
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.digest()


def _prepare(indexes, cdfs, cdf_sizes, offsets) -> tuple[np.ndarray, tuple, bytes]:
    """Indexes as int32 (checked against the table count), the tables as arrays (CDF rows may be CompressAI's
    padded rows or rows cut at their lengths: :func:`fedcodec.codec.coder_tables`) and their key."""
    idx = np.ascontiguousarray(np.asarray(indexes, dtype=np.int32).reshape(-1))
    rows = [np.asarray(row, dtype=np.int32).reshape(-1) for row in cdfs]
    np_sizes, np_offsets = np.asarray(cdf_sizes, dtype=np.int32), np.asarray(offsets, dtype=np.int32)
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= len(np_sizes)):
        raise BitstreamError("entropy decoder indexes are out of range")
    return idx, (rows, np_sizes, np_offsets), _table_key(rows, np_sizes, np_offsets)


def _request(payload: dict, idx: np.ndarray, tables: tuple, expected: _Helper | None = None) -> tuple[_Helper, bool,
                                                                                                        np.ndarray]:
    """Send one request to the helper (started if needed; ``expected``: the helper a stream began on, which
    must still be the one running) and return it with the reply; every failure is a BitstreamError."""
    global _HELPER
    with _LOCK:
        stats["calls"] += 1
        if expected is not None and _HELPER is not expected:
            raise BitstreamError("bitstream payload could not be read (the isolated entropy decoder restarted "
                                 "during the stream)")
        if _HELPER is None or not _HELPER.alive():
            _HELPER = _Helper()
        helper = _HELPER
        if payload["key"] not in helper.keys:
            rows, np_sizes, np_offsets = tables
            payload["tables"] = ([row.tolist() for row in rows], np_sizes.tolist(), np_offsets.tolist())
            if len(helper.keys) >= MAX_TABLES:  # the helper clears its tables before taking this one
                helper.keys.clear()
        try:
            ok, values = helper.request(payload, int(idx.size))
            helper.keys.add(payload["key"])
        except TimeoutError:
            stats["timed_out"] += 1
            helper.kill()
            _HELPER = None
            raise BitstreamError("bitstream payload is corrupt (the entropy decoder did not finish in time)") from None
        except (EOFError, BrokenPipeError, OSError, struct.error):
            stats["crashed"] += 1
            code = None
            with contextlib.suppress(Exception):
                code = helper.proc.wait(timeout=2)
            helper.kill()
            _HELPER = None
            how = (f"signal {signal.Signals(-code).name}" if code is not None and code < 0 and
                   -code in signal.valid_signals() else f"exit status {code}")
            raise BitstreamError(f"bitstream payload is corrupt (it crashed the isolated entropy decoder: {how})") \
                from None
    return helper, ok, values


def _non_canonical() -> BitstreamError:
    stats["non_canonical"] += 1
    return BitstreamError("bitstream payload is corrupt (the entropy-coded data is not what the encoder writes "
                          "for the symbols it decodes to)")


def decode_with_indexes(string: bytes, indexes: Sequence[int] | np.ndarray, cdfs: Sequence[Sequence[int]],
                        cdf_sizes: Sequence[int], offsets: Sequence[int]) -> list[int]:
    """CompressAI's ``RansDecoder.decode_with_indexes`` with the same arguments, run in the helper process.

    Raises :class:`BitstreamError` when the string crashes or stalls the decoder, or is not exactly what
    fedcodec's encoder would write for the decoded symbols.
    """
    if not isinstance(string, (bytes, bytearray)):
        raise BitstreamError(f"entropy-coded string must be bytes, got {type(string).__name__}")
    idx, tables, key = _prepare(indexes, cdfs, cdf_sizes, offsets)
    _, ok, values = _request({"key": key, "string": bytes(string), "indexes": idx.tobytes(), "tables": None},
                             idx, tables)
    if not ok:
        raise _non_canonical()
    return values.tolist()


#: One stream is read at a time (the helper keeps one stream's state between its parts).
_STREAM_LOCK = threading.Lock()


class GuardedStream:
    """One rANS stream of several parts (``BufferedRansEncoder``: e.g. the hyper-latent's symbols, then the
    latent's, whose tables the caller derives from the first part), read part by part in the helper process.

    Use as a context manager; call :meth:`decode` once per part, in the order they were encoded, with
    ``last=True`` on the last: the helper then checks that encoding all parts again gives exactly the received
    string (the canonical check of :func:`decode_with_indexes`, over the whole stream). Earlier parts come back
    before that check (the caller needs them to go on) but with every value in an encoder's range; they are
    untrusted until the last part returns.
    """

    def __init__(self, string: bytes) -> None:
        if not isinstance(string, (bytes, bytearray)):
            raise BitstreamError(f"entropy-coded string must be bytes, got {type(string).__name__}")
        self.string = bytes(string)
        self.helper: _Helper | None = None
        self.done = False

    def __enter__(self) -> GuardedStream:
        _STREAM_LOCK.acquire()
        return self

    def __exit__(self, *exc) -> None:
        _STREAM_LOCK.release()

    def decode(self, indexes: Sequence[int] | np.ndarray, cdfs: Sequence[Sequence[int]], cdf_sizes: Sequence[int],
               offsets: Sequence[int], last: bool = False) -> list[int]:
        """The next part's symbols (as ``RansDecoder.decode_stream``)."""
        if self.done:
            raise RuntimeError("this stream's last part was already read")
        idx, tables, key = _prepare(indexes, cdfs, cdf_sizes, offsets)
        first = self.helper is None
        payload = {"key": key, "op": "start" if first else "next", "last": bool(last),
                   "string": self.string if first else None, "indexes": idx.tobytes(), "tables": None}
        self.helper, ok, values = _request(payload, idx, tables, expected=None if first else self.helper)
        self.done = bool(last)
        if not ok:
            raise _non_canonical()
        return values.tolist()


def ensure_started() -> None:
    """Start the helper now (it otherwise starts on the first decode); forked children then share it."""
    global _HELPER
    with _LOCK:
        if _HELPER is None or not _HELPER.alive():
            _HELPER = _Helper()


def shutdown() -> None:
    """Stop the helper process (it is also stopped when this process exits)."""
    global _HELPER
    with _LOCK:
        if _HELPER is not None:
            _HELPER.kill()
            _HELPER = None


class GuardedCoder:
    """Stands in for a CompressAI ``_EntropyCoder``: encodes in-process, decodes in the helper."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = getattr(inner, "name", "ans")

    def encode_with_indexes(self, *args, **kwargs):
        return self.inner.encode_with_indexes(*args, **kwargs)

    def decode_with_indexes(self, string, indexes, cdfs, cdf_sizes, offsets):
        return decode_with_indexes(string, indexes, cdfs, cdf_sizes, offsets)

    @staticmethod
    def open_stream(string: bytes) -> GuardedStream:
        """A multi-part stream read in the helper (:meth:`fedcodec.codec.SemanticCodec.decode_latents`)."""
        return GuardedStream(string)


_SWAP_LOCK = threading.RLock()


@contextlib.contextmanager
def guarded_entropy_coders(model) -> Iterator[None]:
    """Within the block, every CompressAI entropy model inside ``model`` decodes through the helper."""
    from compressai.entropy_models import EntropyModel

    with _SWAP_LOCK:
        swapped = []
        for m in model.modules():
            if isinstance(m, EntropyModel) and not isinstance(m.entropy_coder, GuardedCoder):
                swapped.append((m, m.entropy_coder))
                m.entropy_coder = GuardedCoder(m.entropy_coder)
        try:
            yield
        finally:
            for m, coder in swapped:
                m.entropy_coder = coder
