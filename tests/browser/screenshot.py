"""Make docs/screenshot.png: the explorer on a sample graph, with a feature selected (its
activation heatmap on the image) and the toy ground-truth region selected (the circuit that
starts there highlighted).

    python tests/browser/screenshot.py [--graphs app/sample_graphs] [--graph NAME] [--out docs/screenshot.png]

docs/screenshot.png was made with `--node-steps 4 --edge-steps 8 --height 1100` (node threshold
0.6, edge threshold 0.9: a readable picture).

Needs Debian's /usr/bin/chromium (apt-get install -y chromium). Not a test.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE), str(ROOT / "tests"), str(ROOT)]


def pick_feature(state, name: str) -> str | None:
    """The feature of the default view that is most active on the image (ties: influence)."""
    from app.view.details import feature_position_activations

    current = state.current(name)
    s, g = current.session, current.session.graph
    best = None
    for i in current.view.node_indices.tolist():
        if s.kinds[i] != "feature" or not len(g.image_positions):
            continue
        score = (float(feature_position_activations(s, i)[g.image_positions].max()), float(s.influence[i]))
        if best is None or score > best[0]:
            best = (score, s.keys[i])
    return best[1] if best else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--graphs", default=str(ROOT / "app" / "sample_graphs"))
    parser.add_argument("--graph", default=None, help="file name (default: the first color-* graph, else the first)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshot.png"))
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--node-steps", type=int, default=0, help="press ArrowLeft this often on the node slider")
    parser.add_argument("--edge-steps", type=int, default=0, help="press ArrowLeft this often on the edge slider")
    args = parser.parse_args(argv)

    from conftest import CHROMIUM, FLAGS, Server
    from browser_helpers import click_node, open_app, wait_idle
    from playwright.sync_api import sync_playwright

    from app import ids
    from app.factory import create_app

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = create_app(args.graphs)
    names = app.state.store.names()
    name = args.graph or next((n for n in names if n.startswith("color")), names[0] if names else None)
    if name is None:
        print(f"no graphs in {args.graphs}", file=sys.stderr)
        return 1
    feature = pick_feature(app.state, name)
    server = Server(app)
    errors = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.on("pageerror", lambda err: errors.append(str(err)))
            open_app(page, server.url, name)
            for slider, steps in ((ids.NODE_SLIDER, args.node_steps), (ids.EDGE_SLIDER, args.edge_steps)):
                if steps:
                    page.locator(f"#{slider} [role=slider]").focus()
                    for _ in range(steps):
                        page.keyboard.press("ArrowLeft")
                    wait_idle(page)
            if feature:
                click_node(page, feature)
                wait_idle(page)
            if page.locator(f"#{ids.TRUTH_REGION}").is_visible():
                page.locator(f"#{ids.TRUTH_REGION}").click()
                wait_idle(page)
            page.evaluate(f"() => document.getElementById('{ids.CYTO}')._cyreg.cy.fit(undefined, 30)")
            page.mouse.move(5, args.height - 5)
            time.sleep(0.5)
            page.screenshot(path=args.out)
            browser.close()
    finally:
        server.close()
    if errors:
        print("page errors:", *errors, sep="\n", file=sys.stderr)
        return 1
    print(f"{args.out}: {name}, feature {feature}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
