"""A recording TCP relay: clients talk to the relay, the relay to the FHIR server, and every
byte a client sent is kept per connection, in the writes it arrived in.  The client-library
tests classify exactly what fhirpy, fhirclient and requests put on the wire."""

from __future__ import annotations

import socket
import threading


class Relay:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.connections: list[bytearray] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            up = socket.create_connection(self.upstream)
            sent = bytearray()
            with self._lock:
                self.connections.append(sent)
            threading.Thread(target=self._pump, args=(client, up, sent), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, client, None), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, keep: bytearray | None) -> None:
        try:
            while data := src.recv(65536):
                if keep is not None:
                    keep += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def take(self) -> list[bytes]:
        """The byte streams of the connections so far (and forget them)."""
        with self._lock:
            out = [bytes(c) for c in self.connections]
            self.connections.clear()
        return out

    def close(self) -> None:
        self.server.close()


def requests_in(stream: bytes) -> list[bytes]:
    """Cut a connection's byte stream into requests (head + Content-Length body)."""
    out, i = [], 0
    while i < len(stream):
        end = stream.find(b"\r\n\r\n", i)
        if end < 0:
            out.append(stream[i:])
            break
        head = stream[i:end + 4]
        n = next((int(x.split(b":", 1)[1]) for x in head.split(b"\r\n")[1:]
                  if x.lower().startswith(b"content-length:")), 0)
        out.append(stream[i:end + 4 + n])
        i = end + 4 + n
    return out
