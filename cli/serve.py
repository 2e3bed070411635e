"""`etl serve`: the HTTP API and dashboard (etl.serve) on uvicorn."""

from __future__ import annotations

import click

from cli.common import err, settings
from etl.core.errors import ConfigError


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback needs ETL_API_TOKEN.")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8080, show_default=True)
@click.option("--log-level", type=click.Choice(["warning", "info", "debug"]), default="info",
              show_default=True, help="uvicorn's access and error log.")
def serve_command(host: str, port: int, log_level: str) -> None:
    """HTTP API and dashboard: start, watch and read runs (http://HOST:PORT/).

    Runs are started only from the `serve_pipelines` allow-list (ETL_SERVE_PIPELINES), and
    only by callers with the bearer token `api_token` (ETL_API_TOKEN); without a token the
    server is read-only and binds only to loopback."""
    from etl.serve.security import allowed_pipelines, check_bind

    conf = settings()
    check_bind(host, conf.api_token)
    allowed = allowed_pipelines(conf)
    try:
        import uvicorn

        from etl.serve.app import create_app
    except ImportError as exc:
        raise ConfigError(f"etl serve needs the serve extra ({exc.name} is missing): pip "
                          "install 'dramatiq-etl[serve]'") from None
    app = create_app(settings=conf)
    err.print(f"etl serve on http://{host}:{port}/ (API under /api/v1, spec /openapi.json); "
              f"pipelines: {', '.join(allowed)}; "
              + ("token required for starts" if conf.api_token else "read-only (no api_token)"),
              markup=False, highlight=False, soft_wrap=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=log_level != "warning")
