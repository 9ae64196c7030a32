"""A TCP relay in front of a real server whose client-to-server bytes a test can hold back: to the client, a
dependency that stops answering (a stalled Neo4j), while the server behind it stays real and answers everything
once the relay lets it through. ``held`` counts the connections whose bytes wait, so a test waits on that, not
on time."""

from __future__ import annotations

import socket
import threading


class Relay:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._cond = threading.Condition()
        self._holding = False
        self.held = 0  # connections with bytes held back now
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(self.target)
            except OSError:
                return  # closed
            with self._cond:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, holdable: bool) -> None:
        try:
            while data := src.recv(65536):
                if holdable:
                    with self._cond:
                        if self._holding:
                            self.held += 1
                            self._cond.notify_all()
                            self._cond.wait_for(lambda: not self._holding)
                            self.held -= 1
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def hold(self) -> None:
        """From now on, bytes from clients wait (each connection's first chunk is counted in ``held``)."""
        with self._cond:
            self._holding = True

    def release(self) -> None:
        with self._cond:
            self._holding = False
            self._cond.notify_all()

    def wait_held(self, n: int, timeout_s: float) -> bool:
        """Whether ``n`` connections have bytes held back within ``timeout_s``."""
        with self._cond:
            return self._cond.wait_for(lambda: self.held >= n, timeout_s)

    def close(self) -> None:
        self.release()
        self._listener.close()
        with self._cond:
            for s in self._sockets:
                s.close()
