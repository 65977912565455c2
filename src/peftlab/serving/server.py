"""Running the API under uvicorn (as vLLM's OpenAI server does), on a socket bound here.

The socket is bound before uvicorn starts, so a port in use is a one-line error and
`--port 0` knows its port at once. uvicorn's own settings bound the work: idle keep-alive
connections close after `keep_alive_s`, connections beyond `max_connections` get a 503,
and SIGTERM/SIGINT stop accepting, let in-flight requests finish (up to the request
timeout), then stop the batcher.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass

from peftlab.serving.api import Limits, build_app
from peftlab.serving.batcher import Batcher
from peftlab.serving.engine import Engine, ServeError


@dataclass
class Connections:
    keep_alive_s: int = 5  # vLLM's TIMEOUT_KEEP_ALIVE
    max_connections: int = 1024  # beyond: 503 at once
    backlog: int = 2048  # bursts of new connections wait in the kernel, not refused


class Server:
    def __init__(self, engine: Engine, batcher: Batcher, host: str, port: int, limits: Limits,
                 admin_token: str | None, connections: Connections | None = None):  # fmt: skip
        import uvicorn

        connections = connections or Connections()
        self.engine, self.batcher = engine, batcher
        self.socket = bind(host, port, connections.backlog)
        config = uvicorn.Config(
            build_app(engine, batcher, limits, admin_token),
            lifespan="off",
            # uvicorn's own logging config would bind handlers to the sys.stderr of the
            # moment (a closed stream later, under test capture or a redirected CLI);
            # without it, its warnings go through Python's logging like everyone's.
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_keep_alive=connections.keep_alive_s,
            limit_concurrency=connections.max_connections,
            timeout_graceful_shutdown=int(limits.timeout_s) + 1,
            backlog=connections.backlog,
        )
        self.uvicorn = uvicorn.Server(config)
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.socket.getsockname()[:2]
        return f"http://{host}:{port}"

    @property
    def address(self) -> tuple[str, int]:
        return self.socket.getsockname()[:2]

    def serve(self) -> None:
        """Serve until SIGTERM/SIGINT (in the main thread) or stop(); then drain."""
        try:
            self.uvicorn.run(sockets=[self.socket])
        finally:
            self.batcher.stop()
            self.socket.close()

    def start(self) -> Server:
        """Serve from a background thread (tests, benchmarks); returns once listening."""
        self.thread = threading.Thread(target=self.serve, name="peftlab-http", daemon=True)
        self.thread.start()
        while not self.uvicorn.started:
            if not self.thread.is_alive():
                raise ServeError("the server stopped while starting")
            threading.Event().wait(0.01)
        return self

    def stop(self) -> None:
        self.uvicorn.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=60)


def bind(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto named, not 0: asyncio turns Nagle off (TCP_NODELAY) only on accepted sockets
    # whose proto is IPPROTO_TCP; with Nagle on, every request on a kept-alive connection
    # waited out the client's 40 ms delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock
