"""Job (and study) states; a study's state mirrors its newest job."""
from __future__ import annotations

import enum


class JobState(enum.StrEnum):
    RECEIVING = "RECEIVING"
    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    RESULTS_READY = "RESULTS_READY"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"


class DeliveryState(enum.StrEnum):
    PENDING = "PENDING"
    SENT = "SENT"
    COMMITTED = "COMMITTED"  # sent, and the destination reported it committed (Storage Commitment)
    DEAD = "DEAD"


#: States after which a late instance opens a new job generation.
PAST_RECEIVING = frozenset(s for s in JobState if s is not JobState.RECEIVING)
