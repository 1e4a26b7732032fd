"""Where tables, frames, indexes and models live, and how they are written and read."""

from agf.store.frames import FrameCache
from agf.store.schemas import SCHEMAS, fixed_vectors
from agf.store.store import FORMAT_VERSION, Store, library_versions, now_utc

__all__ = ["FORMAT_VERSION", "SCHEMAS", "FrameCache", "Store", "fixed_vectors", "library_versions", "now_utc"]
