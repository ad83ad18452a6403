"""Errors raised by transcoder loading and checking."""

from tracer.errors import InputError


class TranscoderFormatError(InputError):
    """A transcoder folder / file that is not in the published format (names the file and the problem)."""


class TranscoderMismatchError(InputError):
    """A transcoder set that does not fit the model it is used with (names the file and the mismatch)."""


__all__ = ["TranscoderFormatError", "TranscoderMismatchError"]
