"""A TCP forwarder on loopback for tests: a node talks to the coordinator through it, and the test can
drop the node's network (every open connection cut, new ones refused) and bring it back."""
from __future__ import annotations

import socket
import threading

CHUNK = 1 << 16


def _drop(sock: socket.socket) -> None:
    """Cut a connection now: a blocked recv on it (the pipe threads') returns at once."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already gone


class NetProxy:
    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._up = True
        self.refused = 0  # connections refused while down
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                if not self._up:
                    self.refused += 1
                    _drop(client)
                    client.close()
                    continue
                try:
                    upstream = socket.create_connection(self.target)
                except OSError:
                    client.close()
                    continue
                self._open |= {client, upstream}
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(CHUNK):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _drop(dst)  # one direction ended: so does the other
            with self._lock:
                self._open.discard(src)
            src.close()

    def cut(self) -> None:
        """The network drops: every connection through the proxy is cut and new ones are refused."""
        with self._lock:
            self._up = False
            cut = list(self._open)
        for sock in cut:
            _drop(sock)

    def restore(self) -> None:
        with self._lock:
            self._up = True

    def close(self) -> None:
        self.cut()
        _drop(self.listener)  # wakes the accept thread
        self.listener.close()
