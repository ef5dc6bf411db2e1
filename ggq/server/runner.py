"""uvicorn on a socket ggq binds itself (so a port in use is one clear error, and port 0 gives a
free port whose number is known before the server starts)."""
from __future__ import annotations

import socket
import threading

from ..errors import UsageError


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one; sock.getsockname() tells which)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise UsageError(f"port must be an integer in 0..65535 (got {port!r})")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UsageError(f"cannot resolve host {host!r}: {e.strerror}") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Server:
    """uvicorn serving app on sock: run() in this thread (Ctrl-C stops it), or start()/stop()
    in a background thread (tests, embedding)."""

    def __init__(self, app, sock: socket.socket, log_level: str = "warning"):
        import uvicorn

        self.sock = sock
        self.url = url_of(sock)
        config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="off", ws="none",
                                timeout_graceful_shutdown=3)
        self.server = uvicorn.Server(config)
        self._thread = None

    def run(self) -> None:
        self.server.run(sockets=[self.sock])

    def start(self, timeout: float = 30.0) -> "Server":
        self._thread = threading.Thread(target=self.run, name="ggq-uvicorn", daemon=True)
        self._thread.start()
        for _ in range(int(timeout / 0.01)):
            if self.server.started or not self._thread.is_alive():
                break
            self._thread.join(0.01)
        if not self.server.started:
            raise RuntimeError("the server did not start")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self.sock.close()
