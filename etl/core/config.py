"""Settings: which backends to use and which pipeline to run.

Each setting is read, first found wins, from:
  1. the environment: ETL_BROKER_URL, ETL_STATE_URL, ETL_OBJECTS_URL, ETL_RESULTS_URL,
     ETL_PIPELINE, ETL_QUEUE (the Dramatiq queue the ETL actors use; give each deployment
     sharing a broker its own);
  2. `etl.toml` in the working directory (keys at top level or under an `[etl]` table:
     broker_url, state_url, objects_url, results_url, pipeline);
  3. the `[etl]` section of `setup.cfg` in the working directory (same keys);
  4. the embedded defaults below, which need no services at all.

Settings of particular parts, resolved the same way and documented where they are read:
  lease_ttl        ETL_LEASE_TTL, seconds a task's lease lives without a heartbeat
                   (etl.runtime.leases)
  results_ttl      ETL_RESULTS_TTL, seconds a task's result record is kept (default a
                   day; a message option `results_ttl`, or enqueue_job's `_results_ttl`,
                   overrides it per job; results.middleware)
  results_url      (above) sqlite:///, redis://, mongodb://, postgresql://, mysql:// or
                   mariadb://, each taking `?key_prefix=NAME` to share a server or file;
                   `none` records nothing (results)
  s3_endpoint_url  ETL_S3_ENDPOINT_URL, the S3-compatible endpoint of s3:// object stores
                   (etl.stores.objects.s3)
  demo_output      ETL_DEMO_OUTPUT, where the built-in demo writes its dataset (etl.demo)
  api_token        ETL_API_TOKEN, the bearer token `etl serve` asks of every call that
                   changes something, and without which it binds only to loopback
                   (etl.serve.security)
  serve_pipelines  ETL_SERVE_PIPELINES, the module:attribute specs `etl serve` may start,
                   comma separated (default: the `pipeline` setting, else the demo;
                   etl.serve.security)
  crash_at         ETL_CRASH_AT, crash points for chaos tests (etl.core.faults): from the
                   environment only, read at import, so forked children and worker
                   processes see it as their parent does
"""

from __future__ import annotations

import configparser
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from etl.core.errors import ConfigError

#: Embedded defaults: everything in-process or on local disk under .etl/.
DEFAULTS = {
    "broker_url": "stub://",
    "state_url": "sqlite:///.etl/state.db",
    "objects_url": "file://.etl/objects",
    "results_url": "sqlite:///.etl/results.db",
    "pipeline": "",
    "queue": "etl",
    "lease_ttl": "30",
    "results_ttl": "86400",
    "s3_endpoint_url": "",
    "demo_output": "out/flights",
    "api_token": "",
    "serve_pipelines": "",
    "crash_at": "",
}

#: Settings taken from the environment only, never from etl.toml or setup.cfg.
ENVIRONMENT_ONLY = ("crash_at",)

#: What Dramatiq accepts as a queue name.
_QUEUE_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9._-]*")

ENV_NAMES = {name: f"ETL_{name.upper()}" for name in DEFAULTS}


@dataclass(frozen=True)
class Settings:
    """Resolved settings; `sources` says where each value came from (for `etl config`)."""

    broker_url: str
    state_url: str
    objects_url: str
    results_url: str
    pipeline: str
    queue: str
    lease_ttl: str
    results_ttl: str
    s3_endpoint_url: str
    demo_output: str
    api_token: str
    serve_pipelines: str
    crash_at: str
    sources: dict[str, str]


def _read_toml(path: Path) -> dict[str, str]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    table = data.get("etl", data)
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [etl] must be a table")
    return _known(table, str(path))


def _read_setup_cfg(path: Path) -> dict[str, str]:
    parser = configparser.ConfigParser()
    try:
        parser.read(path, encoding="utf-8")
    except (OSError, UnicodeDecodeError, configparser.Error) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if not parser.has_section("etl"):
        return {}
    return _known(dict(parser.items("etl")), f"{path} [etl]")


def _known(table: dict[str, object], where: str) -> dict[str, str]:
    unknown = sorted(set(table) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}; "
                          f"known: {', '.join(DEFAULTS)}")
    for key in ENVIRONMENT_ONLY:
        if key in table:
            raise ConfigError(f"{where}: {key} is read from the environment only "
                              f"({ENV_NAMES[key]})")
    for key, value in table.items():
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key} must be a string, not {type(value).__name__}")
    return dict(table)  # type: ignore[arg-type]


def load_settings(*, cwd: Path | None = None, env: dict[str, str] | None = None) -> Settings:
    """Resolve every setting from the environment, etl.toml, setup.cfg and the defaults."""
    cwd = cwd or Path.cwd()
    env = os.environ if env is None else env
    layers: list[tuple[str, dict[str, str]]] = [
        ("environment", {k: env[v] for k, v in ENV_NAMES.items() if env.get(v)}),
    ]
    if (cwd / "etl.toml").is_file():
        layers.append(("etl.toml", _read_toml(cwd / "etl.toml")))
    if (cwd / "setup.cfg").is_file():
        layers.append(("setup.cfg", _read_setup_cfg(cwd / "setup.cfg")))
    layers.append(("default", DEFAULTS))
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    for name in DEFAULTS:
        for where, layer in layers:
            if layer.get(name):
                values[name], sources[name] = layer[name], where
                break
        else:
            values[name], sources[name] = DEFAULTS[name], "default"
    check_queue_name(values["queue"], where=sources["queue"])
    return Settings(**values, sources=sources)


def environment_setting(name: str, *, env: dict[str, str] | None = None) -> str:
    """One setting from the environment, or its default: for what is read where no Settings
    is at hand and before any file may be read (ETL_CRASH_AT, at import)."""
    env = os.environ if env is None else env
    return env.get(ENV_NAMES[name]) or DEFAULTS[name]


def seconds_setting(settings: Settings, name: str) -> float:
    """A setting that is a number of seconds > 0 (lease_ttl, results_ttl); empty is its
    default. ConfigError (one line, naming the variable) otherwise."""
    raw = getattr(settings, name) or DEFAULTS[name]
    try:
        seconds = float(raw)
    except ValueError:
        raise ConfigError(f"{ENV_NAMES[name]} must be a number of seconds, got {raw!r}") from None
    if seconds <= 0:
        raise ConfigError(f"{ENV_NAMES[name]} must be > 0, got {raw!r}")
    return seconds


def check_queue_name(name: str, *, where: str) -> str:
    """`name` if Dramatiq accepts it as a queue name; else a ConfigError saying where it came from."""
    if not _QUEUE_NAME.fullmatch(name):
        raise ConfigError(f"queue {name!r} (from {where}) must start with a letter or _ and hold "
                          "only letters, digits, '.', '-' and '_'")
    return name


__all__ = ["DEFAULTS", "ENVIRONMENT_ONLY", "ENV_NAMES", "Settings", "check_queue_name",
           "seconds_setting",
           "environment_setting", "load_settings"]
