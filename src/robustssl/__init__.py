"""robustssl: how robust is a self-supervised vision encoder, on which downstream task, against which threat.

>>> import robustssl as rs
>>> ds = rs.data.load("scenes", split="test", size=32)
>>> enc = rs.encoders.create("convnet_small")
"""

__version__ = "0.1.0"

from robustssl import data, encoders, heads, metrics, runtime, threats  # noqa: E402

__all__ = ["__version__", "data", "encoders", "heads", "metrics", "runtime", "threats"]
