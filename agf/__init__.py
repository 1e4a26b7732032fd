"""agf: a music feature store and embedding database built around Artist Group Factors."""

__version__ = "0.1.0"

from agf.errors import AgfError  # noqa: E402

__all__ = ["AgfError", "__version__"]
