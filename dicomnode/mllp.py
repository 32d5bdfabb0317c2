"""MLLP framing (HL7 v2 Minimal Lower Layer Protocol, HL7 v2.5.1 Appendix C): a message travels as
``<VT> message <FS><CR>`` (0x0B, then 0x1C 0x0D) over one TCP (or TLS) connection.

Framing only, shared by the ``hl7`` destination type (a client: send one message, read its ACK) and any inbound
HL7 listener: :func:`frame` wraps a message, :class:`FrameDecoder` takes bytes as they arrive and hands back
whole messages, :func:`read_frame` reads one message from a socket with a deadline, naming what went wrong
(timeout, closed mid-message, bytes that are no MLLP frame). No HL7 is parsed here.
"""
from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
FILE_SEPARATOR = b"\x1c"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
_SHOWN = 40  # bytes of a bad answer quoted in an error


class MllpError(RuntimeError):
    """The peer's bytes are not one MLLP frame, or it closed or stayed silent before the frame ended."""


class MllpTimeout(MllpError):
    """No whole frame within the deadline."""


class MllpClosed(MllpError):
    """The peer closed the connection before a whole frame arrived."""


class MllpFramingError(MllpError):
    """Bytes that are no MLLP frame: data outside a frame, or a frame larger than allowed."""


def frame(message: bytes) -> bytes:
    """``message`` in its MLLP envelope. ValueError when it holds a framing byte (0x0B or 0x1C): an HL7 message
    never does (the builder escapes or drops control characters), and such a byte would end the frame early."""
    if START_BLOCK in message or FILE_SEPARATOR in message:
        raise ValueError("an MLLP message must not contain 0x0B or 0x1C")
    return START_BLOCK + message + END_BLOCK


def shown(data: bytes) -> str:
    """The first bytes of ``data`` for an error message (control bytes as escapes)."""
    text = repr(data[:_SHOWN])
    return text + (f" ... ({len(data)} bytes)" if len(data) > _SHOWN else "")


@dataclass
class FrameDecoder:
    """Bytes in, whole messages out, for a stream that may bring part of a frame or several at once.

    Whitespace between frames (CR, LF, a peer's keep-alive) is ignored; any other byte outside a frame is a
    :class:`MllpFramingError` (the stream cannot be trusted after it)."""

    max_bytes: int = MAX_MESSAGE_BYTES
    ready: list[bytes] = field(default_factory=list)  # whole messages :func:`read_frame` has not handed out yet
    _buffer: bytearray = field(default_factory=bytearray)
    _in_frame: bool = False

    @property
    def partial(self) -> bool:
        """Whether part of a frame has arrived and its end not yet."""
        return self._in_frame

    @property
    def pending_bytes(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """The messages ``data`` completes (without their envelopes), in order."""
        messages: list[bytes] = []
        self._buffer += data
        while self._buffer:
            if not self._in_frame:
                stripped = self._buffer.lstrip(b"\r\n\t ")
                if not stripped:
                    self._buffer.clear()
                    break
                if stripped[:1] != START_BLOCK:
                    raise MllpFramingError(f"not an MLLP frame: {shown(bytes(stripped))}")
                del self._buffer[:len(self._buffer) - len(stripped) + 1]
                self._in_frame = True
                continue
            end = self._buffer.find(END_BLOCK)
            if end < 0:
                if len(self._buffer) > self.max_bytes:
                    raise MllpFramingError(f"an MLLP frame of more than {self.max_bytes} bytes")
                break
            messages.append(bytes(self._buffer[:end]))
            del self._buffer[:end + len(END_BLOCK)]
            self._in_frame = False
        return messages


def read_frame(sock: socket.socket, timeout: float, decoder: FrameDecoder | None = None) -> bytes:
    """The next whole message from ``sock`` within ``timeout`` seconds (the socket's own timeout is changed).
    Pass the same ``decoder`` for every read of one connection: messages that arrived together wait in it.

    Raises :class:`MllpTimeout`, :class:`MllpClosed` (with what had arrived) or :class:`MllpFramingError`."""
    decoder = decoder if decoder is not None else FrameDecoder()
    if decoder.ready:
        return decoder.ready.pop(0)
    deadline = time.monotonic() + timeout
    received = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise MllpTimeout(f"no whole MLLP frame within {timeout:g} s"
                              + (f" ({received} bytes of an unfinished frame)" if decoder.partial else ""))
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        if not data:
            if decoder.partial or decoder.pending_bytes:
                raise MllpClosed(f"the peer closed the connection in the middle of a frame ({received} bytes, "
                                 "no end block)")
            raise MllpClosed("the peer closed the connection without answering")
        received += len(data)
        decoder.ready += decoder.feed(data)
        if decoder.ready:
            return decoder.ready.pop(0)
