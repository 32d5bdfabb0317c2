"""Test-only MLLP peers (the demo's receiver, npm node-hl7-server, is ``dicomnode.peers.node_peers``):

- :class:`PythonHl7Receiver`: the MLLP server of PyPI ``hl7`` (python-hl7, ``hl7.mllp.start_hl7_server``) on a
  free port in a thread of its own; it parses each message with python-hl7 and answers its own ACK
  (``Message.create_ack``).
- :class:`MisbehavingReceiver`: a plain TCP server for the error paths no real receiver produces on demand: it
  answers garbage, closes in the middle of its answer, closes without one, or never answers.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import threading
from types import TracebackType
from typing import Literal

import hl7
import hl7.mllp

from dicomnode.accepting import accepted
from dicomnode.mllp import FrameDecoder, MllpError
from dicomnode.peers.ports import free_port

LOG = logging.getLogger("tests.hl7_receivers")


class PythonHl7Receiver:
    def __init__(self, ack: str = "AA", ack_text: str = "", port: int | None = None) -> None:
        self.ack, self.ack_text = ack, ack_text
        self.port = port or free_port()
        self.messages: list[str] = []  # as received (decoded UTF-8)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="python-hl7-receiver", daemon=True)
        self._server: asyncio.AbstractServer | None = None

    async def _client(self, reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
        try:
            while not writer.is_closing():
                message = await reader.readmessage()
                self.messages.append(str(message))
                writer.writemessage(self._ack(message))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def _ack(self, message: hl7.Message) -> hl7.Message:
        """python-hl7's ACK, with MSA-3 and an ERR segment carrying ``ack_text`` when given."""
        ack = message.create_ack(self.ack)
        if not self.ack_text:
            return ack
        text = self.ack_text.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\")
        lines = str(ack).split("\r")
        lines = [f"{line}|{text}" if line.startswith("MSA|") else line for line in lines]
        return hl7.parse("\r".join([*lines, f"ERR||||E|||{text}"]))

    def __enter__(self) -> PythonHl7Receiver:
        self._thread.start()
        start = hl7.mllp.start_hl7_server(self._client, "127.0.0.1", self.port, encoding="utf-8")
        self._server = asyncio.run_coroutine_threadsafe(start, self._loop).result(10)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


Behaviour = Literal["garbage", "close_mid_ack", "close", "silent"]


class MisbehavingReceiver:
    """Reads one MLLP message per connection (kept in ``messages``), then misbehaves as told."""

    def __init__(self, behaviour: Behaviour, port: int = 0) -> None:
        self.behaviour = behaviour
        self.messages: list[bytes] = []
        self._sock = socket.create_server(("127.0.0.1", port))
        self.port = int(self._sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="misbehaving-mllp", daemon=True)
        self._open: list[socket.socket] = []

    def _serve(self) -> None:
        self._sock.settimeout(0.2)
        for conn, _ in accepted(self._sock, self._stop, LOG, "misbehaving receiver"):
            self._open.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        decoder = FrameDecoder()
        conn.settimeout(10)
        try:
            got: list[bytes] = []
            while not got:
                data = conn.recv(65536)
                if not data:
                    return
                got = decoder.feed(data)
            self.messages += got
            if self.behaviour == "garbage":
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            elif self.behaviour == "close_mid_ack":
                conn.sendall(b"\x0bMSH|^~\\&|RIS|HOSP|||20261207||ACK|1|P|2.5.1\rMSA|A")
            elif self.behaviour == "silent":
                self._stop.wait(30)
        except (OSError, MllpError):
            pass
        finally:
            conn.close()

    def __enter__(self) -> MisbehavingReceiver:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(5)
        for conn in self._open:
            conn.close()
