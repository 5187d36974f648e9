"""Parsing of ``KEY=VALUE`` option values, shared by the CLI (``--set``, ``--arg``) and preset overrides."""

from __future__ import annotations

import json
from typing import Any


def option_value(text: str) -> Any:
    """A ``KEY=VALUE`` option's value: JSON when it parses (``3``, ``0.5``, ``true``, ``[1, 2]``),
    ``none``/``true``/``false`` in any case, else the string itself."""
    text = text.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        lowered = text.lower()
        return {"none": None, "true": True, "false": False}.get(lowered, text)
