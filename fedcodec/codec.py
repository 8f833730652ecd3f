"""The semantic codec: a variable-rate mean-scale hyperprior with a bit-allocation policy head and task adapters.

Shapes and ranges used throughout (B = batch, H and W multiples of :data:`SemanticCodec.multiple`):

- input ``x``: ``(B, 1, H, W)`` float in [0, 1] (a windowed grayscale image);
- latent ``y``: ``(B, M, H/16, W/16)``; hyper-latent ``z``: ``(B, N, H/64, W/64)``;
- ``quality``: ``(B,)`` long in ``[0, num_qualities)`` (0 = lowest rate), or one int for the whole batch.

How the parts fit (everything but the policy head and adapters is CompressAI):

```
y = g_a(x);  z = h_a(y);  z_hat = Q(z)                       EntropyBottleneck (factorized prior); with
                                                            z_gain: Q(z * gz[q]) / gz[q], per quality
mu, sigma = h_s(z_hat)                                      mean-scale hyperprior
G = gain[quality][channel] * policy(mu, sigma, quality)     per-channel gain (Cui et al. gain units,
                                                            as in compressai.latent_codecs.gain) times a
                                                            spatial bit-allocation map from the policy head
y_hat = mu + Q((y - mu) * G) / G                            GaussianConditional(scale = sigma * G)
x_hat = g_s(y_hat)  with zero-initialised residual adapters after each synthesis stage
task_input = x_hat + feature_head(x_hat)                    what the cloud segmenter is given
```

The policy map is computed from ``z_hat`` only, so the decoder rebuilds it exactly and no side information
is sent. A larger gain means finer quantisation (more bits, less error) in that region.

Parameter groups (selected by key prefix, see :data:`GROUP_PREFIXES`): ``base`` is the pretrained codec that
every site holds; ``policy`` and ``adapters`` are the small adaptable subset that federated adaptation trains
and exchanges. Trainable adaptable layers are plain Conv/Linear/GroupNorm so Opacus can compute per-sample
gradients (it cannot for GDN or entropy models).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from compressai import ans
from compressai.entropy_models import EntropyBottleneck, EntropyModel
from compressai.entropy_models import GaussianConditional as _GaussianConditional
from compressai.layers import GDN
from compressai.models import CompressionModel
from compressai.models.utils import conv, deconv

from fedcodec.errors import DataError, UpdateRejectedError

#: Key prefixes of the adaptable parameter groups; every other parameter is in ``base``.
GROUP_PREFIXES: dict[str, tuple[str, ...]] = {
    "policy": ("policy.",),
    "adapters": ("adapters.", "feature_head."),
}
ADAPTABLE_GROUPS = ("policy", "adapters")
ALL_GROUPS = ("base", *ADAPTABLE_GROUPS)
#: Codec architectures: ``v1`` symmetric (the first embedded default), ``lean`` light encoder, small
#: hyper-latent, wider synthesis.
ARCHITECTURES = ("v1", "lean")


def group_of(key: str) -> str:
    """Return the parameter group (``base``, ``policy`` or ``adapters``) of a state-dict key."""
    for group, prefixes in GROUP_PREFIXES.items():
        if key.startswith(prefixes):
            return group
    return "base"


def coder_tables(model: EntropyModel) -> tuple[list, list, list]:
    """``(cdf rows cut at their lengths, lengths, offsets)`` of a CompressAI entropy model, as the Python lists
    rANS takes; rebuilt when a table tensor is replaced (``update``) or written in place, else cached on the model
    (the cache holds the tensors it was built from). rANS reads no further than a row's length, so the cut rows
    code exactly as CompressAI's padded ones (tested)."""
    model._check_cdf_size()
    model._check_cdf_length()
    model._check_offsets_size()
    current = (model._quantized_cdf, model._cdf_length, model._offset)
    cached = model.__dict__.get("_fedcodec_coder_tables")
    if cached is None or any(a is not b or v != b._version for a, v, b in zip(cached[0], cached[1], current)):
        lengths = model._cdf_length.reshape(-1).int().tolist()
        rows = [row[:n] for row, n in zip(model._quantized_cdf.tolist(), lengths)]
        model.__dict__["_fedcodec_coder_tables"] = (current, [t._version for t in current],
                                                    (rows, lengths, model._offset.reshape(-1).int().tolist()))
    return model.__dict__["_fedcodec_coder_tables"][2]


class _LocalStream:
    """One rANS string decoded part by part in this process (CompressAI's ``RansDecoder``), for trusted input;
    :class:`fedcodec.rans_guard.GuardedStream` is the isolated stand-in used for bytes that crossed a network."""

    def __init__(self, string: bytes) -> None:
        self.decoder = ans.RansDecoder()
        self.decoder.set_stream(bytes(string))

    def __enter__(self) -> _LocalStream:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def decode(self, indexes: list[int], cdfs: list, lengths: list, offsets: list, last: bool = False) -> list[int]:
        return self.decoder.decode_stream(indexes, cdfs, lengths, offsets)


class GaussianConditional(_GaussianConditional):
    """CompressAI's GaussianConditional, faster where encoding spends its time (same strings, same state dict).

    - :meth:`build_indexes`: CompressAI compares the scales with each of the 64 table entries in a Python loop,
      64 full-size passes, about 10 % of encoding a 512x512 image. A sorted-table search gives the same index,
      ``#{s in table[:-1] : s < scale}``, with the same float comparisons, in one pass (tested against
      CompressAI's).
    - :meth:`compress`: CompressAI turns the whole CDF table into Python lists on every call and hands rANS every
      row padded to the longest (200,512 integers here, 27,256 used); the rows cut at their lengths are
      converted once per table (:func:`coder_tables`; the strings are compared with CompressAI's in the tests).
      Decoding keeps CompressAI's ``decompress``."""

    def compress(self, inputs: torch.Tensor, indexes: torch.Tensor, means: torch.Tensor | None = None) -> list:
        symbols = self.quantize(inputs, "symbols", means)
        if inputs.dim() < 2:
            raise ValueError("Invalid `inputs` size. Expected a tensor with at least 2 dimensions.")
        if inputs.size() != indexes.size():
            raise ValueError("`inputs` and `indexes` should have the same size.")
        cdfs, lengths, offsets = coder_tables(self)
        return [self.entropy_coder.encode_with_indexes(symbols[i].reshape(-1).int().tolist(),
                                                       indexes[i].reshape(-1).int().tolist(), cdfs, lengths, offsets)
                for i in range(symbols.size(0))]

    def build_indexes(self, scales: torch.Tensor) -> torch.Tensor:
        scales = self.lower_bound_scale(scales)
        table = self.scale_table[:-1].to(device=scales.device, dtype=scales.dtype)
        return torch.searchsorted(table, scales.contiguous(), right=False).int()


def _ste_round(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity gradient in the backward pass."""
    return x + (torch.round(x) - x).detach()


class PolicyHead(nn.Module):
    """Bit-allocation policy: a spatial log-gain map over the latent, from decoder-side information.

    Input: hyperprior means and scales ``(B, 2M, h, w)`` and the quality index ``(B,)``.
    Output: gain map ``(B, 1, h, w)`` in ``[exp(-max_log_gain), exp(max_log_gain)]``; exactly 1 at
    initialisation (the last conv is zero-initialised), so a fresh head does not change the base codec.
    """

    def __init__(self, latent_channels: int, num_qualities: int, hidden: int = 24,
                 max_log_gain: float = math.log(4.0)) -> None:
        super().__init__()
        self.max_log_gain = max_log_gain
        self.inp = nn.Conv2d(2 * latent_channels, hidden, 1)
        self.quality = nn.Linear(num_qualities, 2 * hidden)  # FiLM from the one-hot quality
        self.norm = nn.GroupNorm(4, hidden)
        self.mid = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.out = nn.Conv2d(hidden, 1, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.num_qualities = num_qualities

    def forward(self, means: torch.Tensor, scales: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
        # log(scales) keeps the input well scaled over the whole rate range.
        h = self.inp(torch.cat([means, torch.log(scales.clamp_min(0.11))], dim=1))
        film = self.quality(F.one_hot(quality, self.num_qualities).to(h.dtype))
        gamma, beta = film[:, :, None, None].chunk(2, dim=1)
        h = F.relu(self.norm(h) * (1 + gamma) + beta)
        h = F.relu(self.mid(h))
        return torch.exp(self.max_log_gain * torch.tanh(self.out(h)))


class ResidualAdapter(nn.Module):
    """Low-rank residual 1x1 adapter ``h + up(act(down(h)))``; ``up`` is zero-initialised (identity at start)."""

    def __init__(self, channels: int, rank: int = 8) -> None:
        super().__init__()
        self.down = nn.Conv2d(channels, rank, 1)
        self.up = nn.Conv2d(rank, channels, 1)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(F.gelu(self.down(h)))


class FeatureHead(nn.Module):
    """Light residual image-space head in front of the task network (Liu et al.'s feature reconstruction).

    ``(B, 1, H, W) -> (B, 1, H, W)``; identity at initialisation.
    """

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.inp = nn.Conv2d(1, hidden, 3, padding=1)
        self.out = nn.Conv2d(hidden, 1, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x_hat: torch.Tensor) -> torch.Tensor:
        return x_hat + self.out(F.gelu(self.inp(x_hat)))


class SemanticCodec(CompressionModel):
    """Variable-rate semantic image codec for 1-channel images.

    Args:
        N: channels of the transforms and of the hyper-latent ``z``.
        M: channels of the latent ``y``.
        num_qualities: number of rate points one model covers (quality 0 = lowest rate).
        adapter_rank: rank of the synthesis adapters.
        policy_hidden: width of the policy head.
        gain_range: initial per-channel gains of the lowest and highest quality (geometric in between).
        z_gain: per-quality, per-channel gains on the hyper-latent too (Cui et al.'s z gain units): ``z`` is
            coded as ``Q(z * gz[q]) / gz[q]``, so low qualities can spend fewer bytes on side information.
            Initialised to 1 (no change). Off by default so that codec files without it load unchanged.
    """

    multiple = 64  # g_a downsamples by 16 and h_a by 4 more

    def __init__(self, N: int = 48, M: int = 64, num_qualities: int = 8, adapter_rank: int = 8,
                 policy_hidden: int = 24, gain_range: tuple[float, float] = (0.25, 2.0),
                 z_gain: bool = False, arch: str = "v1", Nz: int | None = None,
                 decoder_widths: Sequence[int] | None = None) -> None:
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown codec architecture {arch!r}; choose from {ARCHITECTURES}")
        self.config = dict(N=N, M=M, num_qualities=num_qualities, adapter_rank=adapter_rank,
                           policy_hidden=policy_hidden, gain_range=list(gain_range))
        if z_gain:
            self.config["z_gain"] = True
        self.arch = arch
        self.N, self.M, self.num_qualities = N, M, num_qualities
        if arch == "v1":
            # The first architecture (files without "arch" in their config): symmetric transforms at full width.
            Nz, widths = N, (N, N, N)
            self.g_a = nn.Sequential(conv(1, N), GDN(N), conv(N, N), GDN(N), conv(N, N), GDN(N), conv(N, M))
            h_a = nn.Sequential(conv(M, N, stride=1, kernel_size=3), nn.LeakyReLU(inplace=True),
                                conv(N, N), nn.LeakyReLU(inplace=True), conv(N, N))
        else:
            # "lean": a light encoder (hospitals encode on modest CPUs) and a small hyper-latent (side
            # information must shrink with the rate); the capacity sits in the synthesis and hyper-synthesis.
            Nz = Nz or 16
            widths = tuple(decoder_widths or (96, 64, 48))
            if len(widths) != 3:
                raise ValueError(f"decoder_widths needs 3 entries, got {widths}")
            self.config.update(arch=arch, Nz=Nz, decoder_widths=list(widths))
            # Space-to-depth front end: no convolution runs at full resolution.
            self.g_a = nn.Sequential(nn.PixelUnshuffle(4), conv(16, N, stride=1, kernel_size=3), GDN(N),
                                     conv(N, N), GDN(N), conv(N, M))
            h_a = nn.Sequential(conv(M, N, stride=1, kernel_size=3), nn.LeakyReLU(inplace=True),
                                conv(N, N), nn.LeakyReLU(inplace=True), conv(N, Nz))
        self.Nz = Nz
        # Parameter order fixes identity hashes (model ids in bitstreams) and optimiser checkpoints: v1 keeps
        # its first files' order (h_a after g_s), lean the order its training checkpoints were written with.
        if arch != "v1":
            self.h_a = h_a
        hyper = N if arch == "v1" else max(N, M)
        # Synthesis in stages so that adapters can sit between them.
        self.g_s = nn.ModuleList([
            nn.Sequential(deconv(M, widths[0]), GDN(widths[0], inverse=True)),
            nn.Sequential(deconv(widths[0], widths[1]), GDN(widths[1], inverse=True)),
            nn.Sequential(deconv(widths[1], widths[2]), GDN(widths[2], inverse=True)),
            deconv(widths[2], 1),
        ])
        if arch == "v1":
            self.h_a = h_a
        self.h_s = nn.Sequential(deconv(Nz, M if arch == "v1" else hyper), nn.LeakyReLU(inplace=True),
                                 deconv(M if arch == "v1" else hyper, M * 3 // 2), nn.LeakyReLU(inplace=True),
                                 conv(M * 3 // 2, M * 2, stride=1, kernel_size=3))
        self.entropy_bottleneck = EntropyBottleneck(Nz)
        self.gaussian_conditional = GaussianConditional(None)
        lo, hi = gain_range
        log_gains = torch.linspace(math.log(lo), math.log(hi), num_qualities)
        # Per-quality, per-channel log-gains (Cui et al. gain units), part of the base codec.
        self.log_gain = nn.Parameter(log_gains[:, None].repeat(1, M).clone())
        # Per-quality, per-channel log-gains of the hyper-latent (base codec; absent when z_gain is off).
        self.log_z_gain = nn.Parameter(torch.zeros(num_qualities, Nz)) if z_gain else None
        self.policy = PolicyHead(M, num_qualities, hidden=policy_hidden)
        self.adapters = nn.ModuleList([ResidualAdapter(w, adapter_rank) for w in widths])
        self.feature_head = FeatureHead()
        # Values derived from the parameters (identity hash, float64 copies), each stored with the
        # parameter version it was computed from (see _parameter_version).
        self._derived: dict = {}
        # The loss weights the codec was trained with (fedcodec.losses.LossWeights), from its file; few-shot
        # adaptation uses them by default. Not a parameter: not in the state dict or the identity hash.
        self.training_loss = None

    # ------------------------------------------------------------------ building blocks
    def _quality_tensor(self, quality: int | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
        q = torch.as_tensor(quality, device=device, dtype=torch.long)
        if q.ndim == 0:
            q = q.expand(batch)
        if q.shape != (batch,):
            raise DataError(f"quality must be an int or a ({batch},) tensor, got shape {tuple(q.shape)}")
        if int(q.min()) < 0 or int(q.max()) >= self.num_qualities:
            raise DataError(f"quality must lie in [0, {self.num_qualities - 1}], got {q.tolist()}")
        return q

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 1:
            raise DataError(f"expected a (B, 1, H, W) image tensor, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise DataError(f"expected a float image tensor in [0, 1], got dtype {x.dtype}")
        if x.shape[-1] % self.multiple or x.shape[-2] % self.multiple:
            raise DataError(f"H and W must be multiples of {self.multiple} (pad first), got {tuple(x.shape[-2:])}")
        if not torch.isfinite(x).all():
            raise DataError("the image contains NaN or infinite values")

    def gains(self, z_hat: torch.Tensor, quality: torch.Tensor,
              exact: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decoder-side quantities from ``z_hat``: means, scales and the total gain ``G`` (all ``(B, M, h, w)``).

        With ``exact`` (entropy coding) they are computed in float64 from float64 copies of the parameters and
        returned as float64. The entropy coder picks its table for each symbol by comparing ``scales * G``
        with fixed thresholds, and encoder and decoder must pick the same one: in float32 the summation order
        of a convolution (thread count, batch composition, device, library version) moves results by about
        1e-7 relative, enough to cross a threshold now and then and desynchronise the whole rest of the
        string (CompressAI issue 279). In float64 the same differences are about 1e-16, below the spacing
        of float32 thresholds by eight orders of magnitude.
        """
        if exact:
            params = self._cached("float64", lambda: {k: v.detach().to(torch.float64)
                                                      for k, v in self.named_parameters()
                                                      if k.startswith(("h_s.", "policy.", "log_gain"))})
            h_s = {k[len("h_s."):]: v for k, v in params.items() if k.startswith("h_s.")}
            pol = {k[len("policy."):]: v for k, v in params.items() if k.startswith("policy.")}
            z64 = z_hat.to(torch.float64)
            means, scales = torch.func.functional_call(self.h_s, h_s, (z64,)).chunk(2, dim=1)
            scales = scales.abs().clamp_min(0.11)
            channel_gain = torch.exp(params["log_gain"][quality])[:, :, None, None]
            spatial_gain = torch.func.functional_call(self.policy, pol, (means, scales, quality))
            return means, scales, channel_gain * spatial_gain
        means, scales = self.h_s(z_hat).chunk(2, dim=1)
        scales = scales.abs().clamp_min(0.11)  # GaussianConditional's lower scale bound
        channel_gain = torch.exp(self.log_gain[quality])[:, :, None, None]
        spatial_gain = self.policy(means, scales, quality)
        return means, scales, channel_gain * spatial_gain

    def synthesize(self, y_hat: torch.Tensor) -> torch.Tensor:
        """``g_s`` with adapters: ``(B, M, h, w) -> (B, 1, 16h, 16w)``."""
        h = y_hat
        for stage, adapter in zip(self.g_s[:-1], self.adapters):
            h = adapter(stage(h))
        return self.g_s[-1](h)

    def task_input(self, x_hat: torch.Tensor) -> torch.Tensor:
        """The image the cloud task network sees: ``x_hat`` through the feature head."""
        return self.feature_head(x_hat)

    def _z_gain(self, quality: torch.Tensor) -> torch.Tensor | None:
        """``(B, N, 1, 1)`` hyper-latent gains of ``quality``, or None without z gains."""
        if self.log_z_gain is None:
            return None
        return torch.exp(self.log_z_gain[quality])[:, :, None, None]

    def _z_hat(self, z: torch.Tensor, noisy: bool, quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        zg = self._z_gain(quality)
        if zg is not None:
            z = z * zg
        _, z_likelihoods = self.entropy_bottleneck(z, training=noisy)
        medians = self.entropy_bottleneck._get_medians()
        # The synthesis path always sees rounded values (straight-through), as at decode time.
        z_hat = _ste_round(z - medians) + medians
        return (z_hat / zg if zg is not None else z_hat), z_likelihoods

    def _decode_z(self, z_strings: Sequence[bytes], shape: tuple[int, int], quality: torch.Tensor) -> torch.Tensor:
        """The decoder's ``z_hat`` from the hyper-latent strings (gain removed)."""
        z_hat = self.entropy_bottleneck.decompress(list(z_strings), shape)
        zg = self._z_gain(quality)
        return z_hat / zg if zg is not None else z_hat

    # ------------------------------------------------------------------ forward (training and exact eval)
    def forward(self, x: torch.Tensor, quality: int | torch.Tensor, noisy: bool | None = None) -> dict:
        """Differentiable pass.

        Args:
            x: ``(B, 1, H, W)`` float in [0, 1].
            quality: int or ``(B,)`` long tensor.
            noisy: rate term from uniform-noise likelihoods (training) when True; defaults to
                ``self.training``. The reconstruction always uses rounded latents (straight-through),
                so in eval mode ``x_hat`` equals what :meth:`decompress` produces.

        Returns:
            ``{"x_hat": (B,1,H,W), "likelihoods": {"y", "z"}, "gain": (B,M,h,w)}``.
        """
        self._check_input(x)
        noisy = self.training if noisy is None else noisy
        q = self._quality_tensor(quality, x.shape[0], x.device)
        y = self._analysis(x)
        z = self.h_a(y)
        z_hat, z_likelihoods = self._z_hat(z, noisy, q)
        means, scales, gain = self.gains(z_hat, q)
        centred = (y - means) * gain
        _, y_likelihoods = self.gaussian_conditional(centred, scales * gain, training=noisy)
        # Value round((y-mu)G)/G + mu; the detached residual divided by G keeps a gradient w.r.t. G
        # (a plain straight-through round would make x_hat independent of G, see research/codecs.md 2.2).
        y_hat = y + (torch.round(centred) - centred).detach() / gain
        x_hat = self.synthesize(y_hat)
        return {"x_hat": x_hat, "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}, "gain": gain}

    # ------------------------------------------------------------------ real entropy coding
    def _z_medians(self) -> torch.Tensor:
        """``(N, 1, 1)`` the factorized prior's medians: hyper-latent symbols are ``round(z * gz - median)``."""
        eb = self.entropy_bottleneck
        return eb._extend_ndims(eb._get_medians().detach(), 2)

    def _z_from_symbols(self, symbols: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
        """The decoder's ``z_hat`` from hyper-latent symbols ``(B, N, h, w)`` (what CompressAI's
        ``EntropyBottleneck.decompress`` dequantises to, gain removed); the encoder uses the same function, so
        both sides compute the entropy parameters from identical values."""
        z_hat = symbols.to(torch.float32) + self._z_medians()
        zg = self._z_gain(quality)
        return z_hat / zg if zg is not None else z_hat

    @torch.no_grad()
    def compress(self, x: torch.Tensor, quality: int) -> dict:
        """Entropy-code ``x`` ``(B, 1, H, W)`` at one quality.

        Returns ``{"strings": [strings], "shape": (h_z, w_z)}`` with one ``bytes`` per image: a single rANS
        stream holding the hyper-latent's symbols and then the latent's (CompressAI's ``BufferedRansEncoder``; the
        decoder reads the hyper-latent first, rebuilds the latent's tables from it and reads on). One stream
        instead of CompressAI's two strings (``[y_strings, z_strings]``, still decoded by :meth:`decompress`) saves
        one 8-byte coder flush and its word padding: about 7 bytes per image, 7 % of a quality-1 file at
        256x256. :meth:`update` must have been called after the last parameter change.
        """
        self._check_input(x)
        x = x.to(self.log_gain.device)  # the transforms run where the codec is; rANS reads host memory
        q = self._quality_tensor(quality, x.shape[0], x.device)
        y = self._analysis(x)
        z = self.h_a(y)
        zg = self._z_gain(q)
        eb, gc = self.entropy_bottleneck, self.gaussian_conditional
        z_symbols = eb.quantize(z * zg if zg is not None else z, "symbols", self._z_medians())
        means, scales, gain = self.gains(self._z_from_symbols(z_symbols, q), q, exact=True)
        y_indexes = gc.build_indexes(scales * gain)
        y_symbols = gc.quantize((y.to(torch.float64) - means) * gain, "symbols")
        z_indexes = eb._build_indexes(z_symbols.size())
        z_tables, y_tables = coder_tables(eb), coder_tables(gc)
        strings = []
        for i in range(x.shape[0]):
            encoder = ans.BufferedRansEncoder()
            encoder.encode_with_indexes(z_symbols[i].reshape(-1).int().tolist(),
                                        z_indexes[i].reshape(-1).int().tolist(), *z_tables)
            encoder.encode_with_indexes(y_symbols[i].reshape(-1).int().tolist(),
                                        y_indexes[i].reshape(-1).int().tolist(), *y_tables)
            strings.append(encoder.flush())
        return {"strings": [strings], "shape": tuple(z.shape[-2:])}

    def _analysis(self, x: torch.Tensor) -> torch.Tensor:
        """``g_a`` on channels-last feature maps from the first layer on: oneDNN's faster layout on CPUs (a third
        less time at 512x512), used by :meth:`compress` and by :meth:`forward` (training and adaptation too).
        Only the encoder computes ``y``, so the float rounding that the layout changes cannot desynchronise a
        decoder."""
        h = self.g_a[0](x).contiguous(memory_format=torch.channels_last)
        for layer in self.g_a[1:]:
            h = layer(h)
        return h

    @torch.no_grad()
    def decompress(self, strings: Sequence[Sequence[bytes]], shape: tuple[int, int], quality: int,
                   portable: bool = True) -> dict:
        """Inverse of :meth:`compress`: returns ``{"x_hat": (B, 1, 64*h_z, 64*w_z)}`` (not clamped).

        ``strings`` is ``[streams]`` (one stream per image, as :meth:`compress` writes) or CompressAI's
        ``[y_strings, z_strings]`` (bitstream versions 1-2). ``portable=False`` decodes strings written before
        portable coding (bitstream version 1: tables chosen in float32)."""
        lat = self.decode_latents(strings, shape, quality, portable)
        y_hat = (lat["means"] + lat["symbols"] / lat["gain"]).to(self.log_gain.dtype)
        return {"x_hat": self.synthesize(y_hat)}

    @torch.no_grad()
    def decode_latents(self, strings: Sequence[Sequence[bytes]], shape: tuple[int, int],
                       quality: int | torch.Tensor, portable: bool = True) -> dict:
        """Entropy-decode the strings of :meth:`compress` (or the two string lists of versions 1-2) without
        synthesis.

        Returns ``{"means", "scales", "gain", "symbols"}``, each ``(B, M, 4*h_z, 4*w_z)``: the decoder-side
        hyperprior, the total gain ``G`` and the coded integers ``Q((y - mu) * G)``, all float64 (see :meth:`gains`;
        float32 with ``portable=False``, for version-1 bitstreams); and ``z_symbols`` ``(B, N, h_z, w_z)``, the
        hyper-latent's coded integers. A stream is read through the entropy coder's ``open_stream`` where it has
        one (:class:`fedcodec.rans_guard.GuardedCoder`, inside ``guarded_entropy_coders``), else in-process.
        """
        if len(strings) == 2:
            q = self._quality_tensor(quality, len(strings[1]), self.log_gain.device)
            z_hat = self._decode_z(strings[1], shape, q)
            medians = self._z_medians()
            zg = self._z_gain(q)
            z_symbols = torch.round((z_hat * zg if zg is not None else z_hat) - medians)
            means, scales, gain = self.gains(z_hat, q, exact=portable)
            indexes = self.gaussian_conditional.build_indexes(scales * gain)
            symbols = self.gaussian_conditional.decompress(strings[0], indexes, dtype=means.dtype)
            return {"means": means, "scales": scales, "gain": gain, "symbols": symbols, "z_symbols": z_symbols}
        if len(strings) != 1:
            raise ValueError(f"expected [streams] or [y_strings, z_strings], got {len(strings)} lists")
        if not portable:
            raise ValueError("single-stream bitstreams are always portable (version 3 on)")
        streams = list(strings[0])
        q = self._quality_tensor(quality, len(streams), self.log_gain.device)
        eb, gc = self.entropy_bottleneck, self.gaussian_conditional
        z_tables, y_tables = coder_tables(eb), coder_tables(gc)
        n = eb._quantized_cdf.size(0)
        z_indexes = eb._build_indexes((1, n, *shape)).reshape(-1).int().tolist()
        open_stream = getattr(gc.entropy_coder, "open_stream", _LocalStream)
        parts = []
        for i, stream in enumerate(streams):
            qi = q[i:i + 1]
            with open_stream(stream) as reader:
                z_values = reader.decode(z_indexes, *z_tables)
                z_symbols = torch.tensor(z_values, dtype=torch.int32, device=q.device).reshape(1, n, *shape)
                means, scales, gain = self.gains(self._z_from_symbols(z_symbols, qi), qi, exact=True)
                y_indexes = gc.build_indexes(scales * gain).reshape(-1).int().tolist()
                y_values = reader.decode(y_indexes, *y_tables, last=True)
            symbols = torch.tensor(y_values, dtype=means.dtype, device=means.device).reshape(means.shape)
            parts.append((means, scales, gain, symbols, z_symbols.to(means.dtype)))
        means, scales, gain, symbols, z_symbols = (torch.cat(t) for t in zip(*parts))
        return {"means": means, "scales": scales, "gain": gain, "symbols": symbols, "z_symbols": z_symbols}

    # ------------------------------------------------------------------ parameter groups
    def group_state_dict(self, groups: Iterable[str] = ADAPTABLE_GROUPS) -> dict[str, torch.Tensor]:
        """Float parameters of the named groups, detached copies in a stable key order."""
        groups = _check_groups(groups)
        return {k: p.detach().clone() for k, p in self.named_parameters() if group_of(k) in groups}

    def load_group_state_dict(self, state: Mapping[str, torch.Tensor],
                              groups: Iterable[str] = ADAPTABLE_GROUPS) -> None:
        """Load exactly the parameters of ``groups`` from ``state``.

        Raises :class:`UpdateRejectedError` on a missing or unexpected key, a shape or dtype mismatch or a
        non-finite value; nothing is changed in that case.
        """
        groups = _check_groups(groups)
        own = {k: p for k, p in self.named_parameters() if group_of(k) in groups}
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise UpdateRejectedError(f"parameter subset does not match groups {groups}: "
                                      f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        for key, value in state.items():
            value = torch.as_tensor(value)
            if tuple(value.shape) != tuple(own[key].shape):
                raise UpdateRejectedError(f"{key}: shape {tuple(value.shape)}, expected {tuple(own[key].shape)}")
            if not value.is_floating_point():
                raise UpdateRejectedError(f"{key}: dtype {value.dtype}, expected a floating-point tensor")
            if not torch.isfinite(value).all():
                raise UpdateRejectedError(f"{key}: contains NaN or infinite values")
        with torch.no_grad():
            for key, value in state.items():
                own[key].copy_(torch.as_tensor(value).to(own[key].dtype))

    def set_trainable(self, groups: Iterable[str]) -> list[nn.Parameter]:
        """Freeze everything except ``groups``; returns the trainable parameters.

        The entropy bottleneck's quantiles are never trained here (they are fitted by :meth:`aux_loss`).
        """
        groups = _check_groups(groups)
        trainable = []
        for key, p in self.named_parameters():
            p.requires_grad_(group_of(key) in groups and not key.endswith(".quantiles"))
            if p.requires_grad:
                trainable.append(p)
        return trainable

    def parameter_counts(self) -> dict[str, int]:
        """Number of parameters per group and in total."""
        counts = {g: 0 for g in ALL_GROUPS}
        for key, p in self.named_parameters():
            counts[group_of(key)] += p.numel()
        counts["total"] = sum(counts[g] for g in ALL_GROUPS)
        return counts

    def update(self, scale_table=None, force: bool = False, update_quantiles: bool = False) -> bool:
        """CompressAI's table update, which every parameter change must be followed by before coding; it also
        drops the values cached from the parameters, so that a change the version counters cannot see (an
        in-place write through ``.data``) is not served stale either."""
        self._derived.clear()
        return super().update(scale_table=scale_table, force=force, update_quantiles=update_quantiles)

    def _parameter_version(self) -> tuple | None:
        """A key that changes whenever a parameter is replaced (``.to()``, ``.data =``) or changed in place
        (optimiser steps, ``load_state_dict``): every parameter's storage address and version counter. A cache
        entry holds the storages its key names (:meth:`_cached`), so no new tensor can take one of those
        addresses while the entry lives. In-place writes through ``.data`` bump no counter: :meth:`update`,
        which must follow any change, clears the caches. None when parameters keep no version counter
        (inference mode): nothing is cached then."""
        try:
            return tuple((p.data_ptr(), p._version) for p in self.parameters())
        except RuntimeError:
            return None

    def _cached(self, name, compute):
        """``compute()``, reused while no parameter has changed since (an encode needs the identity hash and the
        float64 hyper-synthesis each time: about 15 % of encoding a 512x512 image, recomputed)."""
        version = self._parameter_version()
        hit = self._derived.get(name)
        if version is not None and hit is not None and hit[0] == version:
            return hit[2]
        value = compute()
        if version is not None:
            self._derived[name] = (version, [p.detach() for p in self.parameters()], value)
        return value

    def identity_hash(self, groups: Iterable[str] = ALL_GROUPS) -> str:
        """SHA-256 (hex) over the named groups' parameters: ``base`` identifies the pretrained codec a site
        must hold; all groups identify the exact model a bitstream needs."""
        groups = _check_groups(groups)
        return self._cached(("identity", groups), lambda: self._identity_hash(groups))

    def _identity_hash(self, groups: tuple[str, ...]) -> str:
        h = hashlib.sha256(repr(sorted(self.config.items())).encode())
        for key, p in self.named_parameters():
            if group_of(key) in groups:
                h.update(key.encode())
                h.update(p.detach().cpu().contiguous().to(torch.float32).numpy().tobytes())
        return h.hexdigest()


def _check_groups(groups: Iterable[str]) -> tuple[str, ...]:
    groups = (groups,) if isinstance(groups, str) else tuple(groups)
    unknown = [g for g in groups if g not in ALL_GROUPS]
    if unknown or not groups:
        raise ValueError(f"unknown parameter groups {unknown}; choose from {ALL_GROUPS}")
    return groups


def pad_to_multiple(x: torch.Tensor, multiple: int = SemanticCodec.multiple) -> tuple[torch.Tensor, tuple[int, int]]:
    """Replicate-pad ``(B, C, H, W)`` on the bottom/right to multiples of ``multiple``; returns the original size."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x, (h, w)


def bits_per_pixel(likelihoods: Mapping[str, torch.Tensor], num_pixels: int) -> torch.Tensor:
    """Estimated rate ``(B,)`` in bits per pixel from likelihood tensors."""
    total = sum(torch.log2(lk).flatten(1).sum(1) for lk in likelihoods.values())
    return -total / num_pixels
