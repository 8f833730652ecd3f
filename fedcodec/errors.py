"""Errors that fedcodec raises for bad input.

Every problem a user can cause (a corrupt bitstream, a mask of the wrong shape, an output path that already
exists, a client update with NaN in it) is raised as a :class:`FedcodecError` subclass whose message names the
problem. The CLI prints that message and exits with status 2 instead of showing a traceback.
"""

from __future__ import annotations


class FedcodecError(Exception):
    """Base class of every user-facing fedcodec error."""


class BitstreamError(FedcodecError):
    """A bitstream is corrupt, truncated, foreign, or from another model."""


class ModelMismatchError(BitstreamError):
    """A bitstream (or a federated update) was made by a different model than the one given."""


class DataError(FedcodecError):
    """An input image, mask or data folder is unusable (wrong shape, dtype, NaN, empty, unreadable)."""


class ModelFileError(FedcodecError):
    """A model or task-network file is missing, corrupt or of the wrong kind."""


class OutputExistsError(FedcodecError):
    """An output path exists already; fedcodec never overwrites silently."""


class UpdateRejectedError(FedcodecError):
    """A federated client update failed validation (keys, shapes, dtypes, finiteness, norm)."""
