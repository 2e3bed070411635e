"""What one `etl serve` process holds: its settings, project folder, allow-list and the
supervisor of the runs it starts."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etl.core.config import Settings
from etl.core.errors import ConfigError
from etl.serve import views
from etl.serve.security import allowed_pipelines
from etl.serve.supervisor import StartRefused, Supervisor


@dataclass
class Server:
    settings: Settings
    root: Path
    allowed: tuple[str, ...] = ()
    supervisor: Supervisor = field(init=False)

    def __post_init__(self) -> None:
        from etl.brokers import is_embedded

        self.allowed = self.allowed or allowed_pipelines(self.settings)
        self.distributed = not is_embedded(self.settings.broker_url)
        self.supervisor = Supervisor(self.root, distributed=self.distributed,
                                     run_status=self.run_status)

    @property
    def mode(self) -> str:
        return "distributed" if self.distributed else "embedded"

    def run_status(self, run_id: str) -> str | None:
        ins = views.inspector(self.root)
        if ins is None:
            return None
        try:
            run = ins.state.get_run(run_id)
            return None if run is None else str(run.status)
        finally:
            ins.close()

    def check_pipeline(self, spec: str, *, shards: int | None,
                       window: dict[str, str] | None) -> None:
        """StartRefused (422, naming the field) when the allow-listed `spec` does not
        import, cannot take `shards`, or cannot be read by `window`: said here, at once,
        rather than by a child that exits."""
        from etl.pipeline import load_pipeline

        try:
            pipeline = load_pipeline(spec)
        except ConfigError as exc:
            raise StartRefused(f"pipeline {spec}: {exc}", status=422, field="pipeline") from None
        try:
            pipeline = pipeline.with_shards(shards)
        except ConfigError as exc:
            raise StartRefused(str(exc), status=422, field="shards") from None
        if window is not None:
            try:
                pipeline.for_window(window["start"], window["end"])
            except ConfigError as exc:
                raise StartRefused(f"window: {exc}", status=422, field="window") from None

    @functools.cached_property
    def _queues(self) -> tuple[str, ...]:
        from etl.pipeline import load_pipeline

        names = []
        for spec in self.allowed:
            try:
                queue = load_pipeline(spec).queue
            except ConfigError:
                continue
            if queue:
                names.append(queue)
        return tuple(names)

    def pipeline_queues(self) -> list[str]:
        """The queues the allow-listed pipelines name besides the `queue` setting."""
        return list(self._queues)

    def cancel(self, run_id: str) -> dict[str, Any]:
        """Cancel `run_id` through the runner (etl.cancel): an embedded child stops once
        its steps in hand end; a distributed run's pending messages are purged too.
        StartRefused (409) for a completed run."""
        from etl.runner import cancel
        from etl.stores import Stores

        stores = Stores.from_settings(self.settings)
        try:
            done = cancel(run_id, purge=self.distributed, settings=self.settings, stores=stores)
        except ConfigError as exc:
            raise StartRefused(str(exc), status=409, field="run_id") from None
        finally:
            stores.state.close()
            if stores.results is not None:
                stores.results.close()
        return {"task_id": run_id, "status": "cancelled", "was": str(done.was),
                "purged": done.purged}


__all__ = ["Server"]
