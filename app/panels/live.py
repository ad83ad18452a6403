"""The live features' part of the page (only with a live model): polling, job stores, panels."""

from __future__ import annotations

from dash import dcc

from app import ids
from app.live import KINDS, LiveConfig
from app.panels.attention import attention_panel, vision_strip
from app.panels.steer import steer_panel
from app.panels.trace import trace_button, trace_panel

POLL_MS = 300


def live_stores() -> list:
    out: list = [dcc.Interval(id=ids.LIVE_POLL, interval=POLL_MS, disabled=True),
                 dcc.Store(id=ids.STORE_STEER_ROWS, data=[])]
    for kind in KINDS:
        # the job id survives a reload of the tab (sessionStorage), the polled status does not
        out.append(dcc.Store(id=ids.store_job(kind), data=None, storage_type="session"))
        out.append(dcc.Store(id=ids.store_status(kind), data=None))
    return out


def live_parts(config: LiveConfig | None) -> dict:
    """What page() adds for a live model: header children, the overlay, aside panels."""
    if config is None:
        return {"stores": [], "header": [], "overlay": [], "aside": []}
    return {"stores": live_stores(), "header": [trace_button()], "overlay": [trace_panel(config)],
            "aside": [vision_strip(), steer_panel(), attention_panel()]}
