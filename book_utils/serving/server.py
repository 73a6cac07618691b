"""Run the service in the notebook's own process (chapter 5.2, "Serving"):
:class:`BackgroundServer` starts uvicorn in a thread on ``127.0.0.1`` and always stops
it; :func:`free_port` finds a port for it.
"""

from __future__ import annotations

import socket
import threading
import time


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class BackgroundServer:
    """Run ``app`` with uvicorn in a daemon thread on ``127.0.0.1:<free port>``; use as
    a context manager.

    ``with BackgroundServer(app) as server: post_json(server.url + "/generate", {...})``
    — leaving the block (also on an error) sets ``should_exit`` and joins the thread, so
    the port is released.
    """

    def __init__(
        self,
        app,
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout: float = 30.0,
    ):
        import uvicorn

        self.host, self.port = host, port or free_port(host)
        config = uvicorn.Config(
            app, host=self.host, port=self.port, log_level="warning", lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.startup_timeout = startup_timeout

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"the server did not start on {self.url} "
                    f"within {self.startup_timeout} s"
                )
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout=10)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
