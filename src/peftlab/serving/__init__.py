"""`peftlab serve`: many task adapters on one base model behind an OpenAI-style API."""

from __future__ import annotations

from peftlab.serving.api import Limits
from peftlab.serving.batcher import Batcher
from peftlab.serving.engine import Engine, ServeError, check_name
from peftlab.serving.server import Connections, Server


def parse_adapters(specs: list[str]) -> dict[str, str]:
    """`NAME=DIR` pairs from the command line, names checked, each name once."""
    adapters: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not path:
            raise ServeError(f"--adapter {spec!r}: write NAME=DIR, e.g. sentiment=runs/a/adapter")
        check_name(name)
        if name in adapters:
            raise ServeError(f"--adapter: the name '{name}' is given twice")
        adapters[name] = path
    return adapters


def start(
    adapters: dict[str, str],
    base: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    admin_token: str | None = None,
    max_batch: int = 16,
    max_wait_ms: float = 10.0,
    queue_size: int = 256,
    limits: Limits | None = None,
    precision: str = "auto",
    connections: Connections | None = None,
) -> Server:
    """Load the base model and adapters, start the batcher, bind the socket; the caller
    then calls serve() (blocking) or start() (a background thread)."""
    engine = Engine(adapters, base, precision=precision)
    batcher = Batcher(engine, max_batch, max_wait_ms / 1000, queue_size).start()
    try:
        return Server(engine, batcher, host, port, limits or Limits(), admin_token, connections)
    except ServeError:
        batcher.stop()
        raise
