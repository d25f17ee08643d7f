"""Python's view of a widget, as a browser test reads it: the test's notebook writes a JSON
state into a Label with a CSS class, and the test polls it from the page."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest


def json_state(selector: str, *, timeout_s: float = 60.0, poll_ms: int = 50):
    """``(read_state(page), wait_state(page, predicate, what, timeout_s))`` for the label at ``selector``."""

    def read_state(page) -> dict | None:
        text = page.locator(selector).first.text_content()
        try:
            return json.loads(text) if text else None
        except json.JSONDecodeError:
            return None

    def wait_state(page, predicate: Callable[[dict], bool], what: str, timeout_s: float = timeout_s) -> dict:
        deadline = time.monotonic() + timeout_s
        state = None
        while time.monotonic() < deadline:
            state = read_state(page)
            if state and predicate(state):
                return state
            page.wait_for_timeout(poll_ms)
        pytest.fail(f"Python never saw {what}; last state: {state}", pytrace=False)

    return read_state, wait_state
