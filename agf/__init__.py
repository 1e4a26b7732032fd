"""agf: a music feature store and embedding database built around Artist Group Factors.

>>> import agf
>>> store = agf.open("agf-store")            # read-only; write=True to ingest or tag
>>> store.sql("select count(*) as n from tracks").to_pylist()
>>> store.similar("Doug Kaufman", k=5)
"""

from agf.errors import AgfError
from agf.version import __version__


def open(path="agf-store", *, write: bool = False, create: bool = False, wait: float = 60.0):  # noqa: A001 - agf.open, as io.open
    """Open the agf store at ``path``.

    Parameters
    ----------
    path : str or Path
        The store's folder (``agf ingest`` or ``agf demo`` made it).
    write : bool
        Hold the store's writer lock, for :meth:`~agf.app.library.Library.ingest` and
        :meth:`~agf.app.library.Library.tag`; read-only otherwise, and any number of readers
        may open a store at once.
    create : bool
        Make an empty store at ``path`` if there is none (implies ``write``).
    wait : float
        Seconds a commit waits for readers before giving up.

    Returns
    -------
    agf.app.library.Library
        With ``sql``, ``vectors``, ``similar``, ``similar_tracks``, ``info``, ``ingest`` and ``tag``.
    """
    from agf.app.library import Library  # here, not above: `import agf` stays instant

    return Library.open(path, write=write, create=create, wait=wait)


__all__ = ["AgfError", "__version__", "open"]
