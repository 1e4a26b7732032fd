"""The use cases: tagging, similarity search, indexing, maps, evaluation, the demo, the web page,
and the Python API (:class:`agf.app.library.Library`, opened by :func:`agf.open`)."""
