"""`etl serve`: an HTTP API and a dashboard over the same state, objects, results and broker
settings as the CLI.

Start runs through the runner (`etl.run`), in a supervised child process (embedded broker)
or enqueued for `etl worker`s (RabbitMQ / Redis); read them through the Inspector. The app
is made by `etl.serve.app.create_app`; FastAPI and uvicorn come with the `serve` extra
(`pip install 'dramatiq-etl[serve]'`).
"""

from __future__ import annotations

__all__: list[str] = []
