class GraphFormatError(ValueError):
    """A graph file that cannot be read: wrong format, missing fields, inconsistent arrays."""
