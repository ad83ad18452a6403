"""vlm-circuits explorer: a Dash app over tracer's attribution graphs.

`python -m app` (app/__main__.py) serves it; `app.factory.create_app(graphs_dir)` builds it.
Importing this package loads no model and no graph.
"""


def create_app(*args, **kwargs):
    from app.factory import create_app as _create_app

    return _create_app(*args, **kwargs)
