"""Feature examples: each transcoder feature's top-activating inputs over a data set, stored in the
published activation-stats format (circuit-tracer-activation-stats-v1) and read back for viewers.

    from tracer.features import ExampleStore, compute_feature_examples

The reader (store.py) needs neither the model nor torch model code; the writer (compute.py) runs
the model and the transcoders.
"""

from tracer.features.store import ExampleStore, ExampleStoreError, FeatureExample, open_store

__all__ = ["ExampleStore", "ExampleStoreError", "FeatureExample", "compute_feature_examples", "open_store"]


def __getattr__(name):  # the writer imports the model stack: load it only when asked for
    if name == "compute_feature_examples":
        from tracer.features.compute import compute_feature_examples

        return compute_feature_examples
    raise AttributeError(name)
