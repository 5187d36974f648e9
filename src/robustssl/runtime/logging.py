"""Package logger: ``robustssl.*`` names, one stderr handler configured by the CLI."""

from __future__ import annotations

import logging


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name if name.startswith("robustssl") else f"robustssl.{name}")


def configure(verbosity: int = 0) -> None:
    """Called once by the CLI: 0 = INFO, 1+ = DEBUG, -1 = WARNING."""
    level = logging.DEBUG if verbosity > 0 else logging.WARNING if verbosity < 0 else logging.INFO
    root = logging.getLogger("robustssl")
    root.setLevel(level)
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
