"""What the explorer shows, computed from a Graph with numpy only (no Dash here).

keys.py      stable string ids of nodes (cytoscape ids, annotation keys)
session.py   a loaded graph plus its cached influence, scores and pruned views
budget.py    re-pruning to a display budget (nodes / edges the browser can draw)
positions.py node coordinates: x by token position (image block apart), y by layer
build.py     the displayed view: hidden nodes, pinned subgraph, supernodes, cytoscape elements
region.py    the circuit that starts at an image region
details.py   everything the details panel shows about one node
"""
