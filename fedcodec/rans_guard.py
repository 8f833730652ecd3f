"""Entropy decoding that no payload can crash: CompressAI's rANS decoder, run in a helper process.

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


def canonical(string, values, idx, cdfs, sizes, offsets, np_sizes, np_offsets):
    v = np.asarray(values, dtype=np.int64) - np_offsets[idx]
    maxv = np_sizes[idx] - 2
    if v.size and int(np.abs(v).max()) > max_abs:
        return False
    byp = (v < 0) | (v >= maxv)
    raw = np.where(v < 0, -2 * v - 1, 2 * (v - maxv))[byp]
    nib = np.zeros(raw.shape, np.int64)
    r = raw.copy()
    while r.any():
        nib += r != 0
        r >>= 4
    puts = int((nib + nib // 15 + 1).sum())
    # rANS writes at most (information bits + 64) / 32 words: 16 bits per symbol, 4 per bypass nibble.
    # The encoder's buffer holds one word per symbol; a stream needing more was never written by it.
    if (16 * len(values) + 4 * puts) // 32 + 8 > len(values):
        return False
    return enc.encode_with_indexes(values, idx.tolist(), cdfs, sizes, offsets) == string


while True:
    (n,) = struct.unpack("<Q", read_exact(8))
    req = pickle.loads(read_exact(n))
    key = req["key"]
    if req.get("tables") is not None:
        if len(tables) >= __MAX_TABLES__:
            tables.clear()
        cdfs, sizes, offsets = req["tables"]
        tables[key] = (cdfs, sizes, offsets, np.asarray(sizes, np.int64), np.asarray(offsets, np.int64))
    cdfs, sizes, offsets, np_sizes, np_offsets = tables[key]
    idx = np.frombuffer(req["indexes"], dtype=np.int32)
    string = req["string"]
    values = dec.decode_with_indexes(string + pad, idx.tolist(), cdfs, sizes, offsets)
    ok = canonical(string, values, idx, cdfs, sizes, offsets, np_sizes, np_offsets)
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


def _table_key(cdfs: np.ndarray, sizes: np.ndarray, offsets: np.ndarray) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for a in (cdfs, sizes, offsets):
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.digest()


def decode_with_indexes(string: bytes, indexes: Sequence[int] | np.ndarray, cdfs: Sequence[Sequence[int]],
                        cdf_sizes: Sequence[int], offsets: Sequence[int]) -> list[int]:
    """CompressAI's ``RansDecoder.decode_with_indexes`` with the same arguments, run in the helper process.

    Raises :class:`BitstreamError` when the string crashes or stalls the decoder, or is not exactly what
    fedcodec's encoder would write for the decoded symbols.
    """
    global _HELPER
    if not isinstance(string, (bytes, bytearray)):
        raise BitstreamError(f"entropy-coded string must be bytes, got {type(string).__name__}")
    idx = np.ascontiguousarray(np.asarray(indexes, dtype=np.int32).reshape(-1))
    np_cdfs = np.asarray(cdfs, dtype=np.int32)
    np_sizes, np_offsets = np.asarray(cdf_sizes, dtype=np.int32), np.asarray(offsets, dtype=np.int32)
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= len(np_sizes)):
        raise BitstreamError("entropy decoder indexes are out of range")
    key = _table_key(np_cdfs, np_sizes, np_offsets)
    payload = {"key": key, "string": bytes(string), "indexes": idx.tobytes(), "tables": None}
    with _LOCK:
        stats["calls"] += 1
        if _HELPER is None or not _HELPER.alive():
            _HELPER = _Helper()
        helper = _HELPER
        if key not in helper.keys:
            payload["tables"] = ([list(map(int, row)) for row in np_cdfs], np_sizes.tolist(), np_offsets.tolist())
            if len(helper.keys) >= MAX_TABLES:  # the helper clears its tables before taking this one
                helper.keys.clear()
        try:
            ok, values = helper.request(payload, int(idx.size))
            helper.keys.add(key)
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
    if not ok:
        stats["non_canonical"] += 1
        raise BitstreamError("bitstream payload is corrupt (the entropy-coded data is not what the encoder writes "
                             "for the symbols it decodes to)")
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
