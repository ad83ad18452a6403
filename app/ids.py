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
FEATURE_BUDGET = "feature-budget"  # slider: index into app.view.build.FEATURE_BUDGETS
VIEW_OPTIONS = "view-options"  # checklist: "all-edges", "subgraph"
NODE_SLIDER_LABEL = "node-threshold-label"  # slider labels show the slider's value
EDGE_SLIDER_LABEL = "edge-threshold-label"
BUDGET_LABEL = "feature-budget-label"

# the graph
CYTO = "attribution-graph"
SUBGRAPH_PANE = "subgraph-pane"  # pinned nodes and supernodes with all their edges
SUBGRAPH = "subgraph-graph"
SUBGRAPH_NOTE = "subgraph-note"

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
STORE_VIEW_EDGES = "store-view-edges"  # {"all": bool, "edges": [[source, target, weight, width], ...]}: drawn on demand
STORE_HL_REGION = "store-hl-region"  # {"nodes": [...], "edges_from": [...]}
STORE_BASE_STYLE = "store-base-style"  # the static cytoscape stylesheet
STORE_FIGURE_KEY = "store-figure-key"  # which graph/image the image figure shows (Patch only that)

# pattern-matching ids (dicts): buttons that select a node, e.g. in the edge lists
GOTO_NODE = "goto-node"

# ---------------------------------------------------------------------- live features (issue 6)
# only in the page when the app runs with a live model (app/panels/live.py)
LIVE_POLL = "live-poll"  # dcc.Interval polling job statuses while a job is queued or running
LIVE_INFO = "live-info"  # which model the live features use
# the "new trace" overlay
TRACE_OPEN = "trace-open"  # header button (shows the running trace's progress)
TRACE_PANEL = "trace-panel"
TRACE_CLOSE = "trace-close"
TRACE_UPLOAD = "trace-upload"
TRACE_USE_CURRENT = "trace-use-current"  # use the open graph's image
TRACE_PREVIEW = "trace-preview"
TRACE_UPLOAD_MESSAGE = "trace-upload-message"
TRACE_PROMPT = "trace-prompt"
TRACE_TARGET_MODE = "trace-target-mode"  # salient / token / contrast
TRACE_TARGET_A = "trace-target-a"
TRACE_TARGET_B = "trace-target-b"
TRACE_MAX_FEATURES = "trace-max-features"
TRACE_MAX_LOGITS = "trace-max-logits"
TRACE_DESIRED_PROB = "trace-desired-prob"
TRACE_BATCH = "trace-batch-size"
TRACE_NAME = "trace-name"
TRACE_SUBMIT = "trace-submit"
TRACE_CANCEL = "trace-cancel"
TRACE_STATUS = "trace-status"
TRACE_BAR = "trace-bar"  # the filled part of the progress bar
TRACE_MESSAGE = "trace-message"
# steering panel
STEER_PANEL = "steer-panel"
STEER_SELECTED = "steer-selected"  # what "add" would add
STEER_ADD = "steer-add"
STEER_CLEAR = "steer-clear"
STEER_ROWS = "steer-rows"
STEER_FREEZE = "steer-freeze"  # checklist: "freeze" (attention), "direct" (direct effects only)
STEER_TOPK = "steer-topk"
STEER_GENERATE = "steer-generate"  # max new tokens, 0: no generation
STEER_RUN = "steer-run"
STEER_STATUS = "steer-status"
STEER_RESULT = "steer-result"
STEER_CHART = "steer-chart"
# pattern-matching ids of one steering row: {"type": STEER_MODE, "row": n}
STEER_MODE = "steer-mode"
STEER_VALUE = "steer-value"
STEER_POSITIONS = "steer-positions"
STEER_REMOVE = "steer-remove"
# attention and region panel
ATTN_PANEL = "attention-panel"
VISION_KIND = "vision-kind"  # off / rollout / similarity overlay on the image
VISION_NOTE = "vision-note"
REGION_ZERO = "region-zero"
REGION_MEAN = "region-mean"
REGION_STATUS = "region-status"
REGION_RESULT = "region-result"
REGION_CHART = "region-chart"
ATTN_GRAPH = "attention-graph-button"
ATTN_BACK = "attention-back"
ATTN_STATUS = "attention-status"
EDGE_INFO = "edge-info"
HEADS_BUTTON = "heads-button"
HEADS_RESULT = "heads-result"
# stores of the live features
STORE_UPLOAD = "store-upload"  # {"token", "name", "width", "height"} of the validated image, or None
STORE_STEER_ROWS = "store-steer-rows"  # [{"row", "key", "layer", "feature", "position", "label", ...}]
STORE_EDGE = "store-edge"  # {"source": key, "target": key, "weight": w} of the tapped edge
STORE_ATTN_BACK = "store-attention-back"  # graph to go back to from its attention graph (session)
STORE_TRACE_CANCEL = "store-trace-cancel"
STORE_VISION_SHOWN = "store-vision-shown"  # the image figure key the vision overlay was drawn on, or None


def store_job(kind: str) -> str:
    """Session store with the id of this tab's job of one kind: {"id": ...} (a reload re-attaches)."""
    return f"store-job-{kind}"


def store_status(kind: str) -> str:
    """Memory store with the polled status of that job."""
    return f"store-status-{kind}"

# batch folder (python -m tracer batch --out DIR opened with --graphs DIR)
BATCH_PANEL = "batch-panel"
BATCH_HEADLINE = "batch-headline"
BATCH_TABLE = "batch-table"
BATCH_RECURRING = "batch-recurring"
BATCH_TYPE = "batch-type"
BATCH_INFLUENCE = "batch-influence"

# supernode suggestions (tracer.graph.supernodes), under the graph
SUGGEST_BUTTON = "suggest-button"
SUGGESTIONS = "suggestions"
SUGGEST_APPLY = "suggest-apply"  # pattern-matching: {"type": SUGGEST_APPLY, "index": k}

# compare mode (tracer.graph.diff): the open graph (A) against another graph of the folder (B)
COMPARE_PANEL = "compare-panel"
COMPARE_WITH = "compare-with"
COMPARE_SUMMARY = "compare-summary"
COMPARE_IMAGE = "compare-image"
COMPARE_TABLE = "compare-table"
COMPARE_DOWNLOAD = "compare-download"
COMPARE_FILE = "compare-file"
