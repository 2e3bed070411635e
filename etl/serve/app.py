"""The app factory: `create_app()` makes the FastAPI app `etl serve` runs on uvicorn.

Every JSON answer goes through MaskedJSONResponse (passwords in URLs masked, whatever a
store kept); every error is a `Problem` body naming the field it is about, never a
traceback; the dashboard is static files of this package (no build step, nothing fetched
from the internet).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from etl.core.config import Settings, load_settings
from etl.core.errors import USER_ERRORS, EtlError
from etl.core.urls import mask_secrets, mask_url
from etl.serve.api import build_router, seed_aliases
from etl.serve.server import Server
from etl.serve.supervisor import StartRefused
from etl.serve.views import NotFound

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")

#: Seconds between two looks at the children that ended (so none stays a zombie).
REAP_EVERY_S = 2.0


class MaskedJSONResponse(JSONResponse):
    """JSON with every string masked (etl.core.urls.mask_secrets) before it is encoded."""

    def render(self, content: Any) -> bytes:
        return super().render(mask_secrets(content))


def _problem(status: int, error: str, *, field: str | None = None,
             detail: list[dict[str, Any]] | None = None,
             headers: dict[str, str] | None = None) -> MaskedJSONResponse:
    return MaskedJSONResponse({"error": mask_url(error), "field": field, "detail": detail},
                              status_code=status, headers=headers)


def cancel_available() -> bool:
    """Whether the runner can cancel runs (the run-control work): then POST
    /api/v1/task/{id}/cancel exists."""
    import etl.runner

    return callable(getattr(etl.runner, "cancel", None))


def create_app(*, root: Path | None = None, settings: Settings | None = None) -> FastAPI:
    """The API and dashboard over the project at `root` (default: the current directory),
    with its settings (default: those `etl` reads there)."""
    root = (root or Path.cwd()).resolve()
    srv = Server(settings or load_settings(cwd=root), root)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        taken = srv.supervisor.take_over()
        if taken:
            log.info("took over run(s) %s", ", ".join(taken))
        stop = threading.Event()

        def reap() -> None:
            while not stop.wait(REAP_EVERY_S):
                srv.supervisor.reap()

        reaper = threading.Thread(target=reap, name="etl-serve-reaper", daemon=True)
        reaper.start()
        try:
            yield
        finally:  # the children go on: the next server takes them over
            stop.set()

    app = FastAPI(title="dramatiq-etl", version="1",
                  summary="Start, watch and read ETL runs over HTTP",
                  default_response_class=MaskedJSONResponse, lifespan=lifespan,
                  docs_url=None, redoc_url=None)  # their pages load scripts from a CDN
    app.state.server = srv
    app.include_router(build_router(with_cancel=cancel_available()))
    app.include_router(seed_aliases())

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> MaskedJSONResponse:
        found = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")),
                  "type": str(e.get("type", ""))} for e in exc.errors()]
        first = found[0] if found else {"loc": [], "msg": "invalid input"}
        where = [p for p in first["loc"] if p not in ("body", "query", "path")]
        field = ".".join(where) or None
        return _problem(422, f"invalid {field or 'input'}: {first['msg']}", field=field,
                        detail=jsonable_encoder(found))

    @app.exception_handler(StartRefused)
    async def refused(request: Request, exc: StartRefused) -> MaskedJSONResponse:
        return _problem(exc.status, str(exc), field=exc.field)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> MaskedJSONResponse:
        return _problem(404, str(exc), field="run_id")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> MaskedJSONResponse:
        return _problem(exc.status_code, str(exc.detail), field="body" if exc.status_code == 400 else None,
                        headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> MaskedJSONResponse:
        if isinstance(exc, USER_ERRORS):
            return _problem(422, str(exc))
        from cli.main import service_errors

        if isinstance(exc, (EtlError, *service_errors())):
            return _problem(503, f"{type(exc).__name__}: {exc}")
        log.exception("%s %s failed", request.method, request.url.path)
        return _problem(500, f"internal error ({type(exc).__name__}); see the server's log")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return app


__all__ = ["MaskedJSONResponse", "cancel_available", "create_app"]
