from tracer.errors import InputError


class GraphFormatError(InputError):
    """A graph file that cannot be read: wrong format, missing fields, inconsistent arrays."""
