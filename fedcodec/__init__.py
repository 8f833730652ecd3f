"""fedcodec: diagnosis-oriented learned medical image compression with federated few-shot adaptation.

The Python API mirrors the command line::

    from fedcodec import load_codec, load_task, encode_image, decode_image, adapt, AdaptConfig
    codec, task = load_codec(), load_task()          # the embedded default
    enc = encode_image(codec, image_uint8, quality=3)  # real bytes (enc.data, enc.bpp)
    image, header = decode_image(codec, enc.data)

Nothing here imports Flower: federation lives in the top-level ``server``, ``clients`` and ``strategies``
packages, which call into this library.
"""

from fedcodec.adapt import AdaptConfig, AdaptResult, DPConfig, adapt
from fedcodec.codec import SemanticCodec
from fedcodec.coding import decode_image, encode_image
from fedcodec.data import Sample, load_folder, load_samples, make_phantoms
from fedcodec.errors import FedcodecError
from fedcodec.evaluate import evaluate, write_report
from fedcodec.model_io import load_codec, load_task, save_codec

__version__ = "0.1.0"

__all__ = [
    "AdaptConfig", "AdaptResult", "DPConfig", "FedcodecError", "Sample", "SemanticCodec", "adapt", "decode_image",
    "encode_image", "evaluate", "load_codec", "load_folder", "load_samples", "load_task", "make_phantoms",
    "save_codec", "write_report",
]
