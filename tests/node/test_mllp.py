"""MLLP framing (dicomnode.mllp): frames split or joined by the stream come out whole; a silent peer, a peer that
closes mid-frame and bytes that are no frame are each named."""
from __future__ import annotations

import socket

import pytest

from dicomnode.mllp import FrameDecoder, MllpClosed, MllpFramingError, MllpTimeout, frame, read_frame


def test_frame_wraps_and_refuses_framing_bytes() -> None:
    assert frame(b"MSH|^~\\&|A\r") == b"\x0bMSH|^~\\&|A\r\x1c\r"
    for bad in (b"MSH\x0b", b"MSH\x1cX"):
        with pytest.raises(ValueError, match="0x0B or 0x1C"):
            frame(bad)


def test_decoder_reassembles_split_and_joined_frames() -> None:
    decoder = FrameDecoder()
    stream = frame(b"one\r") + b"\r\n" + frame("zwei \u00e4\r".encode()) + frame(b"three\r")
    out: list[bytes] = []
    for byte in range(len(stream)):  # one byte at a time
        out += decoder.feed(stream[byte:byte + 1])
    assert out == [b"one\r", "zwei \u00e4\r".encode(), b"three\r"] and not decoder.partial
    assert FrameDecoder().feed(stream) == out  # all at once


def test_decoder_names_garbage_and_oversized_frames() -> None:
    with pytest.raises(MllpFramingError, match=r"not an MLLP frame: b'HTTP/1.1 400"):
        FrameDecoder().feed(b"HTTP/1.1 400 Bad Request\r\n")
    with pytest.raises(MllpFramingError, match="more than 10 bytes"):
        FrameDecoder(max_bytes=10).feed(b"\x0b" + b"x" * 20)


def test_read_frame_times_out_closes_and_keeps_extra_frames() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        with pytest.raises(MllpTimeout, match="within 0.2 s"):
            read_frame(ours, 0.2)
        decoder = FrameDecoder()
        theirs.sendall(frame(b"a\r") + frame(b"b\r"))
        assert read_frame(ours, 2, decoder) == b"a\r" and read_frame(ours, 0.01, decoder) == b"b\r"
        theirs.sendall(b"\x0bMSA|AA")
        theirs.close()
        with pytest.raises(MllpClosed, match=r"in the middle of a frame \(7 bytes"):
            read_frame(ours, 2)
    ours, theirs = socket.socketpair()
    with ours:
        theirs.close()
        with pytest.raises(MllpClosed, match="without answering"):
            read_frame(ours, 2)
