"""Dash layout, one module per panel."""
