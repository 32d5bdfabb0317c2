"""HL7 v2 encoding (sr_writer.hl7): every delimiter, the escape character, CR, LF and other control characters
(MLLP's 0x0B and 0x1C too) are escaped so that a value never ends a field or segment, and come back unescaped;
non-ASCII travels as UTF-8. Acknowledgements are read with their reason; an answer that is no ACK is named."""
from __future__ import annotations

import pytest

from sr_writer.hl7 import NotAnAck, escape, parse_ack, unescape
from sr_writer.hl7.encoding import encode, field, msh, numbered, segment

HOSTILE = "a|b^c~d\\e&f\rg\nh\x0bi\x1cj\x00k Größe 胸部 Ωμέγα"


def test_every_value_is_escaped_and_comes_back() -> None:
    escaped = escape(HOSTILE)
    for raw in "|^~&\r\n\x0b\x1c\x00":
        assert raw not in escaped
    assert escaped.count("\\") % 2 == 0  # every escape sequence is closed
    assert unescape(escaped) == HOSTILE
    assert escape("plain") == "plain" and unescape("\\.br\\") == "\n"


def test_components_and_segments_keep_their_structure() -> None:
    row = segment("PID", "1", "", [HOSTILE, "", "", ["ns|1", "x^y"]], "", ["Müller", "Zoë"])
    parts = row.split("|")
    assert len(parts) == 6 and parts[0] == "PID"
    id_number, _, _, issuer = parts[3].split("^")
    assert unescape(id_number) == HOSTILE and [unescape(p) for p in issuer.split("&")] == ["ns|1", "x^y"]
    assert field(["a", "", ""]) == "a"  # trailing empty components dropped
    assert numbered("OBR", {1: "1", 4: "x"}) == "OBR|1|||x"
    assert msh("APP", "FAC").startswith("MSH|^~\\&|APP|FAC")
    assert encode(segment("NTE", "1", "L", "Größe")) == "NTE|1|L|Größe".encode()


def test_acks_are_read_with_their_reason() -> None:
    ack = parse_ack(b"MSH|^~\\&|RIS|H|CXRNODE||20261207||ACK^R01^ACK|9|P|2.5.1\rMSA|AE|CXR123|bad \\F\\ PID\r"
                    b"ERR||PID^1^3|101^Required field missing^HL70357|E||||PID-3 is empty\r")
    assert (ack.code, ack.control_id, ack.accepted, ack.rejected) == ("AE", "CXR123", False, False)
    assert ack.text == "bad | PID; Required field missing; PID-3 is empty"
    assert parse_ack(b"MSH|^~\\&|||||||ACK|1|P|2.5.1\nMSA|AR|X").rejected  # LF as segment end is taken too
    assert parse_ack(b"MSH|^~\\&|||||||ACK|1|P|2.5.1\rMSA|CA|X").accepted


@pytest.mark.parametrize(("answer", "reason"), [
    (b"HTTP/1.1 200 OK\r\n", "no MSH segment"),
    (b"MSH|^~\\&|||||||ACK|1|P|2.5.1\r", "no MSA segment"),
    (b"MSH|^~\\&|||||||ACK|1|P|2.5.1\rMSA|OK|1", "MSA-1 is 'OK', not an acknowledgement code"),
])
def test_an_answer_that_is_no_ack_is_named(answer: bytes, reason: str) -> None:
    with pytest.raises(NotAnAck, match=reason):
        parse_ack(answer)
