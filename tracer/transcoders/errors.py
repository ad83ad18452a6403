"""Errors raised by transcoder loading and checking."""


class TranscoderFormatError(ValueError):
    """A transcoder folder / file that is not in the published format (names the file and the problem)."""


class TranscoderMismatchError(ValueError):
    """A transcoder set that does not fit the model it is used with (names the file and the mismatch)."""


__all__ = ["TranscoderFormatError", "TranscoderMismatchError"]
