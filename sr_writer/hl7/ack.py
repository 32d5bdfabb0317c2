"""Reading an HL7 v2 acknowledgement (original mode): ``MSA-1`` AA / AE / AR (or the enhanced-mode CA / CE / CR),
``MSA-2`` the control ID acknowledged, ``MSA-3`` and ``ERR`` the receiver's reason. Anything else is not an ACK."""
from __future__ import annotations

from dataclasses import dataclass

from sr_writer.hl7.encoding import ENCODING, component, segments, unescape

ACCEPT = ("AA", "CA")
ERROR = ("AE", "CE")
REJECT = ("AR", "CR")
MAX_REASON = 300


class NotAnAck(ValueError):
    """The answer has no MSH and MSA segment with an acknowledgement code."""


@dataclass(frozen=True)
class Ack:
    code: str  # AA, AE, AR (CA, CE, CR)
    control_id: str  # MSA-2: the message acknowledged
    text: str  # MSA-3 and the ERR segments' words, "" when none

    @property
    def accepted(self) -> bool:
        return self.code in ACCEPT

    @property
    def rejected(self) -> bool:
        """AR: the receiver refuses the message as such (sending it again cannot help)."""
        return self.code in REJECT


def parse_ack(data: bytes) -> Ack:
    """The acknowledgement in ``data`` (one MLLP frame's content). :class:`NotAnAck` otherwise."""
    text = data.decode(ENCODING, errors="replace")
    rows = segments(text)
    if not rows or rows[0][0] != "MSH":
        raise NotAnAck(f"the answer is not an HL7 message (no MSH segment): {text[:60]!r}")
    msa = next((row for row in rows if row[0] == "MSA"), None)
    if msa is None or len(msa) < 2:
        raise NotAnAck("the answer has no MSA segment: not an acknowledgement")
    code = unescape(msa[1]).strip().upper()
    if code not in (*ACCEPT, *ERROR, *REJECT):
        raise NotAnAck(f"MSA-1 is {code!r}, not an acknowledgement code (AA, AE, AR)")
    words = [unescape(msa[3]).strip()] if len(msa) > 3 and msa[3].strip() else []
    for row in rows:
        if row[0] == "ERR":
            # ERR-1 (v2.4 and before: location^^^code&text), ERR-3 code^text, ERR-7 diagnostic, ERR-8 user message
            parts = [component(row[3], 2) if len(row) > 3 else "", unescape(row[7]) if len(row) > 7 else "",
                     unescape(row[8]) if len(row) > 8 else "",
                     unescape(row[1]).replace("^", " ").replace("&", " ") if len(row) > 1 else ""]
            words += [p.strip() for p in parts if p.strip()]
    reason = "; ".join(dict.fromkeys(words))
    return Ack(code, unescape(msa[2]).strip() if len(msa) > 2 else "", reason[:MAX_REASON])
