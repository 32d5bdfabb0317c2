"""HL7 v2: the ORU^R01 of a result set (``oru``), escaping and segments (``encoding``), reading an ACK (``ack``).
Pure: data in, text or bytes out; the MLLP transport is the node's (``dicomnode.mllp``)."""
from sr_writer.hl7.ack import Ack, NotAnAck, parse_ack
from sr_writer.hl7.encoding import CHARSET, encode, escape, unescape
from sr_writer.hl7.oru import Route, build_oru

__all__ = ["CHARSET", "Ack", "NotAnAck", "Route", "build_oru", "encode", "escape", "parse_ack", "unescape"]
