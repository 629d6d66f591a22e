"""A TCP proxy on a port of the test's own: a service outage without touching the service.

The worker is pointed at the proxy instead of the real server. `refuse()` closes the
listener (new connections are refused) and cuts the live connections; `resume()`
listens again on the same port. The real server never notices.
"""
from __future__ import annotations

import random
import select
import socket
import struct
import threading

# Below Linux's ephemeral range (32768-60999), so that while the listener is closed no
# outgoing connection of another process is given our port.
PORT_RANGE = (20000, 32000)
ACCEPT_POLL_S = 0.05
CHUNK_BYTES = 65536


def reserve_port() -> int:
    """A port that nothing listens on now, outside the ephemeral range."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(*PORT_RANGE)
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found")


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `target`, one thread per connection."""

    def __init__(self, target: tuple[str, int], *, port: int | None = None) -> None:
        self.target = target
        self.port = port or reserve_port()
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._listener: socket.socket | None = None
        self._accepting: threading.Thread | None = None
        self._stop = threading.Event()

    # --- control -----------------------------------------------------------------

    def start(self) -> TcpProxy:
        """Listen (again) on the proxy's port."""
        if self._listener is not None:
            return self
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(ACCEPT_POLL_S)
        self._listener = listener
        self._stop.clear()
        self._accepting = threading.Thread(target=self._accept_loop, args=(listener,), daemon=True)
        self._accepting.start()
        return self

    def refuse(self) -> int:
        """From now on connections are refused, and the live ones are cut; how many."""
        self._stop.set()
        if self._accepting is not None:
            self._accepting.join()
        self._listener = self._accepting = None
        return self.cut()

    resume = start

    def cut(self) -> int:
        """Cut every live connection (both ends see the connection reset); how many."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        # Only shut down here: the pump thread closes its sockets, so that no file
        # descriptor it still selects on is closed and reused under it.
        for pair in pairs:
            for sock in pair:
                _shut(sock)
        return len(pairs)

    def close(self) -> None:
        self.refuse()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- forwarding ----------------------------------------------------------------

    def _accept_loop(self, listener: socket.socket) -> None:
        try:
            while not self._stop.is_set():
                try:
                    client, _address = listener.accept()
                except TimeoutError:
                    continue
                try:
                    upstream = socket.create_connection(self.target, timeout=5)
                except OSError:
                    _abort(client)
                    continue
                client.settimeout(None)
                upstream.settimeout(None)
                with self._lock:
                    self._pairs.append((client, upstream))
                threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
        finally:
            listener.close()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        other = {client: upstream, upstream: client}
        try:
            while True:
                readable, _, _ = select.select([client, upstream], [], [], 0.5)
                for sock in readable:
                    data = sock.recv(CHUNK_BYTES)
                    if not data:
                        return
                    other[sock].sendall(data)
        except (OSError, ValueError):
            pass  # cut, or the peer went away
        finally:
            with self._lock:
                if (client, upstream) in self._pairs:
                    self._pairs.remove((client, upstream))
            _abort(client)
            _abort(upstream)


def _shut(sock: socket.socket) -> None:
    """End both directions now; with linger 0 the close that follows sends a reset."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _abort(sock: socket.socket) -> None:
    _shut(sock)
    try:
        sock.close()
    except OSError:
        pass
