"""Run an ASGI app with uvicorn in a thread on a loopback port (tests and benchmarks)."""

import socket
import threading
import time


class BackgroundServer:
    """``with BackgroundServer(app) as url: ...`` -- the port is picked by the OS."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning", limits=None):
        """``limits``: run with the service's own configuration (:func:`s2swclip.serve.limits.server_config`)
        under these :class:`~s2swclip.serve.limits.ConnectionLimits`."""
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"
        if limits is not None:
            from s2swclip.serve.limits import server_config

            config = server_config(app, limits, log_level=log_level)
        else:
            config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on",
                                    timeout_keep_alive=30, backlog=256)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="s2sw-uvicorn", daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.time() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()
