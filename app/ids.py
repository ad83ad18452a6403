"""Component ids, one constant each (callbacks and tests import them from here)."""

# header
URL = "url"
GRAPH_DROPDOWN = "graph-dropdown"
REFRESH_BUTTON = "graph-refresh"
STATUS = "graph-status"

# controls above the graph
NODE_SLIDER = "node-threshold"
EDGE_SLIDER = "edge-threshold"
VIEW_MODE = "view-mode"
COUNTS = "graph-counts"
SCORES = "graph-scores"
BUDGET_NOTE = "budget-note"
HOVER_INFO = "hover-info"

# the graph
CYTO = "attribution-graph"

# actions under the graph
PIN_BUTTON = "pin-button"
UNPIN_ALL_BUTTON = "unpin-all-button"
HIDE_BUTTON = "hide-button"
UNHIDE_ALL_BUTTON = "unhide-all-button"
GROUP_LABEL = "group-label"
GROUP_BUTTON = "group-button"
UNGROUP_BUTTON = "ungroup-button"
ACTION_MESSAGE = "action-message"

# export
EXPORT_SCOPE = "export-scope"
EXPORT_JSON = "export-json"
EXPORT_GRAPHML = "export-graphml"
EXPORT_PNG = "export-png"
EXPORT_SVG = "export-svg"
DOWNLOAD = "download"
EXPORT_MESSAGE = "export-message"

# image panel
IMAGE_PANEL = "image-panel"
IMAGE_SELECT = "image-select"
IMAGE_FIGURE = "image-figure"
IMAGE_NOTE = "image-note"
CLEAR_REGION = "clear-region"
TRUTH_REGION = "truth-region"  # select the toy ground-truth region (graphs with info["toy"])
REGION_INFO = "region-info"

# details panel
DETAILS_TITLE = "details-title"
DETAILS = "details"
LABEL_INPUT = "label-input"
LABEL_SAVE = "label-save"
LABEL_MESSAGE = "label-message"
TOKEN_STRIP = "token-strip"
EXAMPLES = "examples"

# stores
STORE_GRAPH = "store-graph"  # {"name": str | None}
STORE_ANNOT_REV = "store-annotations-rev"  # int, bumped on every annotation change
STORE_SELECTED = "store-selected"  # node key or None
STORE_REGION = "store-region"  # {"image": k, "cells": [[row, col], ...]} or None
STORE_HL_SELECTION = "store-hl-selection"  # {"nodes": [...], "edges": [...]}
STORE_HL_REGION = "store-hl-region"  # {"nodes": [...], "edges_from": [...]}
STORE_BASE_STYLE = "store-base-style"  # the static cytoscape stylesheet
STORE_FIGURE_KEY = "store-figure-key"  # which graph/image the image figure shows (Patch only that)

# pattern-matching ids (dicts): buttons that select a node, e.g. in the edge lists
GOTO_NODE = "goto-node"
