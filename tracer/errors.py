"""The one base class of "bad input" errors (a file, an image, a prompt, a target, a model
reference that cannot be used). Each names what was wrong; `python -m tracer` prints such an
error as one line and exits with status 2 instead of showing a traceback. Subclasses of
ValueError, so callers that catch ValueError keep working. Importing this module is free (no
torch), so the command line can catch these errors before any model code is loaded."""


class InputError(ValueError):
    """Bad input to tracer, with a message meant for the user."""
