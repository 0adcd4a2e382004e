"""A TCP proxy in front of Valkey that can hold back replies, to stage races against a real gateway.

While ``hold()`` is on, replies on command connections are kept (in order) until ``release()``;
connections that sent SUBSCRIBE (pub/sub) pass through untouched. So a test can let a gateway's read
reach Redis, change the data and publish the news, and deliver the stale reply after the news.
Threads and blocking sockets, so that it serves while the test blocks.
"""

from __future__ import annotations

import socket
import threading


class ReplyHoldingProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.holding = False
        self.held: list[tuple[socket.socket, bytes]] = []
        self.sent_upstream = bytearray()  # every command a client sent (to wait for a particular one)
        self.sockets: list[socket.socket] = []
        self.stopped = False

    def start(self) -> ReplyHoldingProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def hold(self) -> None:
        with self.lock:
            self.holding = True

    def release(self) -> None:
        with self.lock:
            self.holding = False
            for client, data in self.held:
                try:
                    client.sendall(data)
                except OSError:
                    pass
            self.held.clear()

    def saw(self, fragment: bytes) -> bool:
        with self.lock:
            return fragment in self.sent_upstream

    def held_replies(self) -> int:
        with self.lock:
            return len(self.held)

    def stop(self) -> None:
        self.stopped = True
        for s in [self.listener, *self.sockets]:
            try:
                s.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while not self.stopped:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self.sockets += [client, upstream]
            state = {"pubsub": False}
            threading.Thread(target=self._up, args=(client, upstream, state), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client, state), daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket, state: dict) -> None:
        try:
            while data := client.recv(65536):
                with self.lock:
                    self.sent_upstream += data
                    if b"SUBSCRIBE" in data.upper():
                        state["pubsub"] = True
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            upstream.close()

    def _down(self, upstream: socket.socket, client: socket.socket, state: dict) -> None:
        try:
            while data := upstream.recv(65536):
                with self.lock:
                    if self.holding and not state["pubsub"]:
                        self.held.append((client, data))
                        continue
                    client.sendall(data)
        except OSError:
            pass
        finally:
            client.close()
