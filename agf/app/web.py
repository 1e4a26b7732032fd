"""``agf serve``: a local web page to search, listen, see why artists are similar, and browse the map.

Server-rendered HTML (Jinja2, autoescaped) with a little plain JavaScript, and a JSON API, over a
:class:`~agf.app.catalog.Catalog` of a store opened read-only. Audio is served by track id only,
from the paths the store recorded, as regular files, with HTTP Range support; every error is a
page or JSON with its status code, never a traceback.
"""

import json
import os
import re
import socket
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from agf.app.catalog import Catalog, NotFound
from agf.errors import AgfError
from agf.progress import say
from agf.store import Store

HERE = Path(__file__).resolve().parent
CHUNK = 1 << 16
_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


def create_app(store_path) -> Starlette:
    """The web application over the store at ``store_path`` (opened read-only, read once)."""
    catalog = Catalog(Store.open(store_path))
    templates = Jinja2Templates(directory=HERE / "templates")

    def page(request: Request, name: str, status_code: int = 200, **context) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {"spaces": catalog.spaces, **context}, status_code=status_code)

    def home(request: Request):
        q, genre = request.query_params.get("q", ""), request.query_params.get("genre") or None
        return page(request, "index.html", summary=catalog.summary(), q=q, genre=genre, genres=catalog.genres,
                    artists=catalog.find_artists(q, genre))

    def artist(request: Request):
        return page(request, "artist.html", artist=catalog.artist(request.path_params["artist_id"]))

    def track(request: Request):
        return page(request, "track.html", track=catalog.track(request.path_params["track_id"]))

    def map_page(request: Request):
        space = request.query_params.get("space") or None
        return page(request, "map.html", map_space=space or (catalog.spaces[0] if catalog.spaces else ""),
                    method=request.query_params.get("method", "pca"))

    def sql_page(request: Request):
        q = request.query_params.get("q", "")
        result, error = None, None
        if q:
            try:
                result = catalog.sql(q)
            except AgfError as exc:
                error = str(exc)
        return page(request, "sql.html", q=q, result=result, error=error, status_code=400 if error else 200)

    def api_artists(request: Request):
        q, genre = request.query_params.get("q", ""), request.query_params.get("genre") or None
        return JSONResponse(catalog.find_artists(q, genre, limit=_int(request.query_params.get("limit", "50"))))

    def api_similar(request: Request):
        params = request.query_params
        artist_id = params.get("artist_id")
        rows = catalog.similar_artists(params.get("artist"), _int(artist_id) if artist_id else None,
                                       _int(params.get("k", "10")), params.get("space") or None)
        return JSONResponse(rows)

    def api_track(request: Request):
        return JSONResponse(_plain(catalog.track(request.path_params["track_id"])))

    def api_map(request: Request):
        return JSONResponse(catalog.map(request.query_params.get("space") or None, request.query_params.get("method", "pca")))

    def api_sql(request: Request):
        return JSONResponse(_plain(catalog.sql(request.query_params.get("q", ""))))

    def audio(request: Request):
        fh, media_type = catalog.audio(request.path_params["track_id"])
        return ranged(request, fh, media_type)

    async def error(request: Request, exc: Exception):
        status = 404 if isinstance(exc, NotFound) else exc.status_code if isinstance(exc, HTTPException) else \
            400 if isinstance(exc, AgfError) else 500
        message = str(exc.detail) if isinstance(exc, HTTPException) else str(exc) if isinstance(exc, AgfError) else \
            "the server met an error it did not expect"
        if request.url.path.startswith("/api/") or request.url.path.endswith("/audio"):
            return JSONResponse({"error": message}, status_code=status)
        return templates.TemplateResponse(request, "error.html", {"spaces": catalog.spaces, "status": status,
                                                                  "message": message}, status_code=status)

    routes = [
        Route("/", home), Route("/artists/{artist_id:int}", artist), Route("/tracks/{track_id:int}", track),
        Route("/tracks/{track_id:int}/audio", audio), Route("/map", map_page), Route("/sql", sql_page),
        Route("/api/artists", api_artists), Route("/api/similar", api_similar), Route("/api/tracks/{track_id:int}", api_track),
        Route("/api/map", api_map), Route("/api/sql", api_sql),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={AgfError: error, HTTPException: error, Exception: error})
    app.state.store_root = catalog.store.root
    return app


def ranged(request: Request, fh, media_type: str) -> Response:
    """The open file ``fh`` as a response: whole (200), or the byte range asked for (206), or 416."""
    size = _size(fh)
    start, end = 0, size - 1
    asked = request.headers.get("range")
    if asked:
        match = _RANGE.match(asked.strip())
        first, last = (match.groups() if match else ("", ""))
        if not match or (first == "" and last == ""):
            fh.close()
            return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
        if first == "":  # the last N bytes
            start = max(0, size - int(last))
        else:
            start, end = int(first), min(int(last), size - 1) if last else size - 1
        if start >= size or start > end:
            fh.close()
            return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
    headers = {"Accept-Ranges": "bytes", "Content-Length": str(end - start + 1)}
    if asked:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return StreamingResponse(_chunks(fh, start, end), status_code=206 if asked else 200, media_type=media_type,
                             headers=headers)


def _size(fh) -> int:
    return os.fstat(fh.fileno()).st_size


def _chunks(fh, start: int, end: int):
    with fh:
        fh.seek(start)
        left = end - start + 1
        while left > 0:
            block = fh.read(min(CHUNK, left))
            if not block:
                return
            left -= len(block)
            yield block


def _int(text: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise AgfError(f"{text!r} is not a whole number") from None


def _plain(value):
    """JSON-ready: timestamps as ISO text, and NaN or infinities (which JSON cannot hold) as null."""
    return json.loads(json.dumps(value, default=str), parse_constant=lambda _: None)


def serve(app: Starlette, host: str = "127.0.0.1", port: int = 8080, quiet: bool = False) -> None:
    """Serve ``app`` (see :func:`create_app`) on ``host:port`` until interrupted; a port already in
    use is one :class:`AgfError`, not a server that starts and stops."""
    import uvicorn

    if not 0 < port < 65536:
        raise AgfError(f"--port must be between 1 and 65535, not {port}")
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:  # the port taken, or a host that does not resolve
        reason = (exc.strerror or str(exc)).split(" (while attempting")[0]  # the address is said once, below
        raise AgfError(f"cannot listen on {host}:{port}: {reason} (another agf serve? choose --port)") from None
    say(f"serving {app.state.store_root} at http://{host}:{port}/ (Ctrl-C to stop)", quiet)
    # uvicorn's own lines (startup, each request) only when asked for: the page is the output
    uvicorn.run(app, host=host, port=port, log_level="warning" if quiet else "info", access_log=not quiet)
