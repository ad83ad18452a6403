"""The explorer in headless Chromium: each shipped graph shows the examples of its own transcoder set."""

from __future__ import annotations

import pytest

from app import ids

from browser_helpers import CY, click_node, open_app, text_of, wait_idle

pytestmark = pytest.mark.browser

GEMMA_GRAPH = "gemma-3-270m-the-capital-of-france-is.graph.safetensors"


def test_the_gemma_sample_graph_shows_pydoc_text_examples(page, sample_server):
    open_app(page, sample_server.url, GEMMA_GRAPH)
    key = page.evaluate(f"""() => {{
        const f = {CY}.nodes().filter(n => n.data('kind') === 'feature').sort((a, b) => b.data('influence') - a.data('influence'));
        return f[0].id();
    }}""")
    click_node(page, key)
    page.wait_for_function(f"() => document.querySelectorAll('#{ids.EXAMPLES} .example').length > 0 || "
                           f"document.getElementById('{ids.EXAMPLES}').innerText.includes('transcoders')")
    wait_idle(page)
    text = text_of(page, ids.EXAMPLES)
    assert "Fires on" in text and "computed with the transcoders" not in text
    assert page.locator(f"#{ids.EXAMPLES} .example").count() >= 3
    assert page.locator(f"#{ids.EXAMPLES} .thumb").count() == 0  # text windows: no image, no empty placeholder
    assert page.locator(f"#{ids.EXAMPLES} .tok.active").count() >= 3
