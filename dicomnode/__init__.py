"""The DICOM node: listener, spool and job state, study completion, scheduling, delivery, CLI."""

__version__ = "0.1.0"
