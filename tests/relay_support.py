"""A TCP relay on 127.0.0.1 for tests of a client that keeps a connection: the test can cut the
connections it carries, go silent (take bytes, answer nothing), or stop listening, as a broker
that restarts, hangs or is down would."""

from __future__ import annotations

import contextlib
import socket
import threading


class Relay:
    """Relays each connection to `upstream`; with none it is silent from the start.

    :param upstream: (host, port) to relay to.
    """

    def __init__(self, upstream: tuple[str, int] | None) -> None:
        self.upstream = upstream
        #: Connections accepted so far: one more after a cut shows the client came back.
        self.accepted = 0
        self.silent = upstream is None
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._serve()

    def _serve(self) -> None:
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # the listener closed: refuse() or close()
                return
            with self._lock:
                self.accepted += 1
                self._sockets.append(client)
                if self.silent or self.upstream is None:
                    continue  # accepted, and never a byte back
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
                self._sockets.append(server)
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
                if not data:
                    break
                if not self.silent:  # silent: what arrives is swallowed
                    dst.sendall(data)
            except OSError:
                break
        for sock in (src, dst):
            _shut(sock)

    def cut(self) -> None:
        """Close every connection carried so far; new ones are relayed as before."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _shut(sock)

    def refuse(self) -> None:
        """Stop listening (connections are refused) and cut the open ones."""
        _shut(self._listener)  # shutdown first: close alone leaves a thread's accept() listening
        self.cut()

    def listen(self) -> None:
        """Listen again on the same port after `refuse`."""
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._serve()

    def close(self) -> None:
        self.refuse()


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # closed already, by the other pump or the peer
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
