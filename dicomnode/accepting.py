"""The accept loop of a TCP listener: connections as they come, until it is told to stop."""
from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any


def accepted(server: socket.socket, stopping: threading.Event, log: logging.Logger,
             name: str) -> Iterator[tuple[socket.socket, Any]]:
    """(socket, address) of each connection ``server`` accepts, until ``stopping`` is set; the server's timeout is how
    often that is looked at. An accept that fails while stopping (the socket closed) ends it; another is logged
    (``"<name>: accept failed"``), and accepting goes on half a second later."""
    while not stopping.is_set():
        try:
            yield server.accept()
        except TimeoutError:
            continue
        except OSError:
            if stopping.is_set():
                return
            log.exception("%s: accept failed", name)
            time.sleep(0.5)
