"""States of a received feedback message (``feedback_messages.state``) and of a verdict's agreement."""
from __future__ import annotations

from enum import StrEnum


class MessageState(StrEnum):
    RECEIVED = "received"  # stored and acknowledged; the match pass compares it
    UNMATCHED = "unmatched"  # no study with its accession number yet (tried again each pass)
    AWAITING_RESULT = "awaiting_result"  # the study has no reasoning record yet (tried again each pass)
    COMPARED = "compared"  # verdicts recorded; counts in the agreement table
    SUPERSEDED = "superseded"  # a later report for the same study replaced its verdicts
    NOT_FINAL = "not_final"  # its result status is not one of feedback.final_statuses: stored, not compared
    AMBIGUOUS = "ambiguous"  # several studies have its accession number: not compared
    NOT_COMPARABLE = "not_comparable"  # the study's result has no reasoning record to compare with
    REFUSED = "refused"  # answered AR: its sender is not allowed
    REJECTED = "rejected"  # answered AE or AR: malformed, or a message type this receiver never takes
    ERROR = "error"  # comparing it failed (the reason says why); not retried


RETRIED = (MessageState.RECEIVED, MessageState.UNMATCHED, MessageState.AWAITING_RESULT)


class Agreement(StrEnum):
    AGREE = "agree"
    DISAGREE = "disagree"
    UNCERTAIN = "uncertain"  # the radiologist or the model was uncertain
    NOT_COMPARED = "not_compared"  # the model gave no answer for this finding
