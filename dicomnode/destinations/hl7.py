"""Destination type ``hl7``: one HL7 v2.5.1 ORU^R01 per result set (``sr_writer.hl7``) over MLLP
(``dicomnode.mllp``) to ``host:port``, TLS optional; one connection per message, the ACK read in
``timeout_seconds``.

The message is built when the whole result set is stored (the record, the stored SR's header, the triage) and
written to the results folder before its delivery row (``queueing``); its payload key is its message control ID
(MSH-10). A later result set of the study (an amendment) sends a corrected message (result status C) naming the
control ID it replaces. What the receiver answers:

- ``AA`` (``CA``): delivered;
- ``AE`` (``CE``): not delivered, the receiver's reason in the delivery error, retried with back-off;
- ``AR`` (``CR``): refused for good (``permanent``): dead-lettered at once with the reason;
- no ACK within ``timeout_seconds``, a connection closed before the ACK ended, an answer that is no MLLP frame or no
  HL7 ACK, an ACK for another control ID: retried, the reason named. The receiver may have the message already;
  a receiver drops a repeated control ID (HL7's duplicate detection), and the delivery loop never re-sends one
  that was acknowledged.
"""
from __future__ import annotations

import datetime as dt
import logging
import socket
import ssl
from collections.abc import Sequence
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from dicomnode.config_types import TLSConfig
from dicomnode.destinations.base import DeliveryItem, DestinationConfig, Outcome, Payload, ResultSet, SendError
from dicomnode.destinations.messages import MessageSender, StoredResult, replaced_key
from dicomnode.destinations.registry import handler_for
from dicomnode.mllp import FrameDecoder, MllpClosed, MllpError, MllpTimeout, frame, read_frame, shown
from sr_writer.hl7 import NotAnAck, Route, build_oru, encode, parse_ack
from sr_writer.result_header import message_id

LOG = logging.getLogger("dicomnode.hl7")
MEDIA_TYPE = "application/hl7-v2"
KIND = "hl7"
_HD_TEXT = 227  # HD namespace IDs are short; a longer name is an error in the config


class Hl7Destination(DestinationConfig):
    built_from: ClassVar[tuple[str, ...]] = ("sr",)  # result kinds its message is built from (output.objects)
    type: Literal["hl7"] = "hl7"
    host: str
    port: int = Field(ge=1, le=65535)
    tls: TLSConfig | None = None
    sending_application: str = "CXRNODE"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    processing_id: Literal["P", "T", "D"] = "P"  # MSH-11: production, training, debugging
    timeout_seconds: float = Field(30, gt=0)  # connecting, and waiting for the ACK

    @field_validator("sending_application", "sending_facility", "receiving_application", "receiving_facility")
    @classmethod
    def _short(cls, value: str) -> str:
        value = value.strip()
        if len(value) > _HD_TEXT or any(ord(ch) < 0x20 for ch in value):
            raise ValueError(f"at most {_HD_TEXT} characters, no control characters")
        return value

    @property
    def address(self) -> str:
        return f"mllp://{self.host}:{self.port}" + (" (TLS)" if self.tls and self.tls.enabled else "")

    def describe(self) -> str:
        return (f"hl7 ORU^R01 {self.address} to {self.receiving_application or '-'}@"
                f"{self.receiving_facility or '-'}, ACK within {self.timeout_seconds:g} s")

    @property
    def route(self) -> Route:
        return Route(self.sending_application, self.sending_facility, self.receiving_application,
                     self.receiving_facility, self.processing_id)


class _Unreachable(Exception):
    """The connection (or TLS handshake) failed before anything was sent."""


@handler_for(Hl7Destination)
class Hl7Sender(MessageSender[Hl7Destination]):
    def message_payload(self, result: ResultSet, stored: StoredResult) -> Payload:
        control_id = message_id("CXR", result.study_instance_uid, result.generation)
        text = build_oru(stored.record, stored.header, self.destination.route, stored.triage, control_id,
                         dt.datetime.now(dt.UTC), replaces=replaced_key(result))
        return Payload(KIND, control_id, MEDIA_TYPE, data=encode(text), suffix=".hl7")

    def send(self, items: Sequence[DeliveryItem]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for number, item in enumerate(items):
            try:
                outcomes.append(self._send_one(item))
            except _Unreachable as exc:
                if number == 0:
                    raise SendError(str(exc)) from None
                outcomes.append(Outcome.failed(str(exc)))
        return outcomes

    def _connect(self) -> socket.socket:
        d = self.destination
        try:
            sock = socket.create_connection((d.host, d.port), timeout=d.timeout_seconds)
        except OSError as exc:
            raise _Unreachable(f"cannot connect to {d.address}: {exc.strerror or exc}") from None
        if d.tls is None or not d.tls.enabled:
            return sock
        from dicomnode.association import tls_context, tls_failure_text

        try:
            return tls_context(d.tls).wrap_socket(sock, server_hostname=d.host)
        except ssl.SSLError as exc:
            sock.close()
            raise _Unreachable(f"TLS to {d.address} failed: {tls_failure_text(exc, d.tls)}") from None
        except OSError as exc:
            sock.close()
            raise _Unreachable(f"TLS to {d.address} failed: {exc}") from None

    def _send_one(self, item: DeliveryItem) -> Outcome:
        d = self.destination
        data = item.path.read_bytes()
        sock = self._connect()
        try:
            try:
                sock.sendall(frame(data))
            except OSError as exc:
                return Outcome.failed(f"the connection to {d.address} broke while sending: {exc}")
            answer = read_frame(sock, d.timeout_seconds, FrameDecoder())
        except MllpTimeout:
            return Outcome.failed(f"no ACK from {d.address} within {d.timeout_seconds:g} s (message {item.key})")
        except MllpClosed as exc:
            return Outcome.failed(f"{d.address}: {exc}; no ACK for message {item.key}")
        except (MllpError, OSError) as exc:
            return Outcome.failed(f"{d.address} did not answer with an MLLP frame: {exc}")
        finally:
            sock.close()
        try:
            ack = parse_ack(answer)
        except NotAnAck as exc:
            return Outcome.failed(f"{d.address} answered something that is not an HL7 ACK: {exc} ({shown(answer)})")
        if ack.control_id and ack.control_id != item.key:
            return Outcome.failed(f"{d.address} acknowledged message {ack.control_id!r}, not {item.key!r}")
        LOG.info("hl7 message acknowledged" if ack.accepted else "hl7 message not accepted",
                 extra={"fields": {"destination": d.name, "control_id": item.key, "ack": ack.code}})
        if ack.accepted:
            return Outcome(True)
        reason = f"{d.address} answered {ack.code}" + (f": {ack.text}" if ack.text else " (no reason given)")
        return Outcome.failed(reason, permanent=ack.rejected)
