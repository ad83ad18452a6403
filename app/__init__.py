"""vlm-circuits explorer: a Dash app over tracer's attribution graphs."""
