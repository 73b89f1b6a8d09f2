"""Exceptions whose message is one line that names the problem and the fix.

Command-line entry points catch :class:`MLIPError` and print ``error: <message>``
instead of a traceback.
"""

__all__ = ["MLIPError", "ModelError", "InputError", "ProtocolError"]


class MLIPError(Exception):
    """Base class: a user-facing error with a one-line message."""


class ModelError(MLIPError):
    """The model file is missing, is not TorchScript, or breaks the model contract."""


class InputError(MLIPError):
    """A structure cannot be evaluated (unknown element, NaN, overlapping atoms, ...)."""


class ProtocolError(MLIPError):
    """The socket peer sent something that is not the i-PI protocol, or vanished."""
