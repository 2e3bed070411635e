"""The routes under /api/v1 (and the seed paths /task/start, /task/status/{id},
/task/result/{id} as aliases): start runs, watch them, read their results and troubles."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any, Iterator
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Path as PathParam, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from etl.inspect import Inspector
from etl.serve import models, views
from etl.serve.security import DEMO_SPEC, token_matches
from etl.serve.server import Server
from etl.serve.supervisor import StartRefused

PREFIX = "/api/v1"

_bearer = HTTPBearer(auto_error=False, description="ETL_API_TOKEN (api_token setting)")

#: Bodies of the answers a route may give besides its own, for the OpenAPI spec.
_READ_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": models.Problem, "description": "No such run"},
    422: {"model": models.Problem, "description": "Invalid input, naming the field"},
    503: {"model": models.Problem, "description": "A store or the broker does not answer"},
}
_WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    **_READ_ERRORS,
    400: {"model": models.Problem, "description": "The body does not parse"},
    401: {"model": models.Problem, "description": "Missing or wrong bearer token"},
    403: {"model": models.Problem,
          "description": "Pipeline not in the allow-list, or the server has no api_token"},
    409: {"model": models.Problem, "description": "The pipeline is working another run"},
}

RunId = Annotated[str, PathParam(description="The run id (task id)", max_length=200)]


def server(request: Request) -> Server:
    return request.app.state.server  # type: ignore[no-any-return]


def require_token(request: Request,
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """Every call that changes something carries the server's bearer token."""
    token = server(request).settings.api_token
    if not token:
        raise HTTPException(403, "this server is read-only: it has no api_token; set "
                                 "ETL_API_TOKEN (or api_token in etl.toml) and start it again")
    header = f"Bearer {credentials.credentials}" if credentials else None
    if not token_matches(header, token):
        raise HTTPException(401, "a bearer token is required (Authorization: Bearer "
                                 "$ETL_API_TOKEN)", headers={"WWW-Authenticate": "Bearer"})


@contextlib.contextmanager
def _inspector(srv: Server) -> Iterator[Inspector | None]:
    ins = views.inspector(srv.root)
    try:
        yield ins
    finally:
        if ins is not None:
            ins.close()


def _urls(run_id: str) -> tuple[str, str]:
    quoted = quote(run_id, safe="")
    return f"{PREFIX}/task/status/{quoted}", f"{PREFIX}/task/result/{quoted}"


def start(body: models.StartRequest, request: Request) -> dict[str, Any]:
    """Start a run of an allow-listed pipeline (or join the one that is on): 202 with its
    task id (the run id) and where to watch it.

    Embedded broker: a child process of the server works it, one run at a time per
    pipeline. RabbitMQ / Redis: its work is enqueued for `etl worker`s."""
    srv = server(request)
    spec = DEMO_SPEC if body.pipeline == "demo" else body.pipeline
    if ":" not in spec:
        raise StartRefused(f"unknown pipeline {body.pipeline!r}: name one of "
                           f"{', '.join(srv.allowed)} (module:attribute)", status=422,
                           field="pipeline")
    if spec not in srv.allowed:
        raise StartRefused(f"pipeline {body.pipeline!r} is not in the allow-list "
                           "(serve_pipelines / ETL_SERVE_PIPELINES)", status=403, field="pipeline")
    if body.fresh and body.run_id:
        raise StartRefused("fresh and run_id exclude each other", status=422, field="fresh")
    srv.check_pipeline(spec, shards=body.shards,
                       window=body.window.model_dump() if body.window else None)
    if body.resume and not body.run_id:
        raise StartRefused("resume needs the run_id of the cancelled run", status=422,
                           field="resume")
    run_id, joined = srv.supervisor.start(
        spec, shards=body.shards, run_id=body.run_id, fresh=body.fresh, resume=body.resume,
        window=body.window.model_dump() if body.window else None)
    status_url, result_url = _urls(run_id)
    return {"task_id": run_id, "status_url": status_url, "result_url": result_url,
            "joined": joined}


def status(run_id: RunId, request: Request) -> dict[str, Any]:
    """Status, progress (rows, shards done/total, share), per-shard state, last error and
    timings of a run."""
    srv = server(request)
    with _inspector(srv) as ins:
        found = views.status(ins, run_id)
    child = srv.supervisor.child(run_id)
    found["worker"] = child.describe() if child is not None else None
    return found


def result(run_id: RunId, request: Request) -> Any:
    """The summary of a completed run; 404 for an unknown id, 409 while it is unfinished."""
    srv = server(request)
    with _inspector(srv) as ins:
        run = views.get_run(ins, run_id)
        if run.status != "completed":
            raise StartRefused(f"run {run_id} is {run.status}, not completed: no result yet "
                               f"(see {_urls(run_id)[0]})", status=409, field="run_id")
        return views.result(ins, run_id, srv.supervisor.outcome(run_id))


def runs(request: Request, limit: Annotated[int, Query(ge=1, le=500)] = 50,
         offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
         pipeline: Annotated[str | None, Query(max_length=200)] = None) -> dict[str, Any]:
    """Runs, newest first, `limit` at a time from `offset`."""
    with _inspector(server(request)) as ins:
        page = views.list_runs(ins, limit=limit + 1, offset=offset, pipeline=pipeline)
    more = len(page) > limit
    return {"runs": page[:limit], "limit": limit, "offset": offset,
            "next_offset": offset + limit if more else None}


def shards(run_id: RunId, request: Request) -> dict[str, Any]:
    """Per-shard progress of a run: status, cursor, batches and rows per stage, share done."""
    with _inspector(server(request)) as ins:
        return {"run_id": run_id, "shards": views.shards(ins, run_id)}


def errors(run_id: RunId, request: Request,
           limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    """The run's failures (TaskErrorLog), newest first, with their context."""
    with _inspector(server(request)) as ins:
        return {"run_id": run_id, "errors": views.errors(ins, run_id, limit=limit)}


def quarantine(run_id: RunId, request: Request) -> dict[str, Any]:
    """Quarantined rows of a run counted by stage and reason."""
    with _inspector(server(request)) as ins:
        reasons = views.quarantine_counts(ins, run_id)
    return {"run_id": run_id, "rows": sum(r["rows"] for r in reasons), "reasons": reasons}


def dead_letters(run_id: RunId, request: Request,
                 limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    """The run's dead-lettered messages (null without a broker)."""
    srv = server(request)
    with _inspector(srv) as ins:
        run = views.get_run(ins, run_id)
        if not srv.distributed:
            return {"run_id": run_id, "queue": None, "dead_letters": None}
        queue = views.queue_of(srv.settings, run, srv.allowed)
        letters = views.dead_letters(srv.settings, queue, run_id, limit=limit) or []
        views.explain_letters(ins, run_id, letters)
    return {"run_id": run_id, "queue": queue, "dead_letters": letters}


def queues(request: Request) -> dict[str, Any]:
    """Gauges of the ETL queues (ready, delayed, in flight, dead letters, consumers); null
    queues in embedded mode."""
    srv = server(request)
    names = [srv.settings.queue, *srv.pipeline_queues()]
    return {"mode": srv.mode, "broker": srv.settings.broker_url,
            "queues": views.queue_gauges(srv.settings, names)}


def pipelines(request: Request) -> dict[str, Any]:
    """The pipelines this server may start (its allow-list), and whether it may start any."""
    srv = server(request)
    return {"pipelines": list(srv.allowed), "mode": srv.mode,
            "can_start": bool(srv.settings.api_token)}


def cancel(run_id: RunId, request: Request) -> dict[str, Any]:
    """Cancel a run: its workers stop after their current steps; it can be resumed."""
    srv = server(request)
    with _inspector(srv) as ins:
        views.get_run(ins, run_id)
    return srv.cancel(run_id)


def build_router(*, with_cancel: bool) -> APIRouter:
    """The /api/v1 routes."""
    router = APIRouter(prefix=PREFIX)
    router.add_api_route("/task/start", start, methods=["POST"], status_code=202,
                         response_model=models.Started, responses=_WRITE_ERRORS, tags=["tasks"],
                         dependencies=[Depends(require_token)])
    router.add_api_route("/task/status/{run_id}", status, methods=["GET"],
                         response_model=models.Status, responses=_READ_ERRORS, tags=["tasks"])
    router.add_api_route("/task/result/{run_id}", result, methods=["GET"],
                         response_model=models.Result,
                         responses={**_READ_ERRORS, 409: {"model": models.Problem,
                                                          "description": "Not complete yet"}},
                         tags=["tasks"])
    if with_cancel:
        router.add_api_route("/task/{run_id}/cancel", cancel, methods=["POST"],
                             response_model=models.Cancelled, responses=_WRITE_ERRORS,
                             tags=["tasks"], dependencies=[Depends(require_token)])
    router.add_api_route("/runs", runs, methods=["GET"], response_model=models.RunsPage,
                         responses=_READ_ERRORS, tags=["runs"])
    router.add_api_route("/runs/{run_id}/shards", shards, methods=["GET"],
                         response_model=models.Shards, responses=_READ_ERRORS, tags=["runs"])
    router.add_api_route("/runs/{run_id}/errors", errors, methods=["GET"],
                         response_model=models.Errors, responses=_READ_ERRORS, tags=["runs"])
    router.add_api_route("/runs/{run_id}/quarantine", quarantine, methods=["GET"],
                         response_model=models.Quarantine, responses=_READ_ERRORS, tags=["runs"])
    router.add_api_route("/runs/{run_id}/dead-letters", dead_letters, methods=["GET"],
                         response_model=models.DeadLetters, responses=_READ_ERRORS,
                         tags=["runs"])
    router.add_api_route("/queues", queues, methods=["GET"], response_model=models.Queues,
                         responses=_READ_ERRORS, tags=["broker"])
    router.add_api_route("/pipelines", pipelines, methods=["GET"],
                         response_model=models.Pipelines, responses=_READ_ERRORS,
                         tags=["pipelines"])
    return router


def seed_aliases() -> APIRouter:
    """/task/start, /task/status/{id}, /task/result/{id}: the paths of the requirements the
    product grew from, answering as their /api/v1 twins."""
    router = APIRouter(tags=["seed aliases"])
    router.add_api_route("/task/start", start, methods=["POST"], status_code=202,
                         response_model=models.Started, responses=_WRITE_ERRORS,
                         dependencies=[Depends(require_token)], name="start_alias")
    router.add_api_route("/task/status/{run_id}", status, methods=["GET"],
                         response_model=models.Status, responses=_READ_ERRORS,
                         name="status_alias")
    router.add_api_route("/task/result/{run_id}", result, methods=["GET"],
                         response_model=models.Result,
                         responses={**_READ_ERRORS, 409: {"model": models.Problem,
                                                          "description": "Not complete yet"}},
                         name="result_alias")
    return router


__all__ = ["PREFIX", "build_router", "seed_aliases"]
