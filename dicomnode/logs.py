"""Structured logging: one JSON object per line (or plain text), fields passed with ``extra={'fields': {...}}``.

Never pass patient name or patient ID in fields or messages at INFO level or above.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

_HANDLER_MARK = "_cxr_node_handler"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update({k: v for k, v in fields.items() if k not in out})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return text


def setup_logging(level: str = "INFO", json_lines: bool = True, file: Path | None = None) -> None:
    """Configure the root logger once (idempotent: replaces the handler set up before)."""
    root = logging.getLogger()
    for old in list(root.handlers):
        # ours from an earlier call, or logging.basicConfig's plain stream handler; keep others (e.g. pytest's)
        if getattr(old, _HANDLER_MARK, False) or type(old) is logging.StreamHandler:
            root.removeHandler(old)
    handler: logging.Handler = (logging.FileHandler(file, encoding="utf-8") if file
                                else logging.StreamHandler(sys.stderr))
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, root.level))
    if root.level > logging.DEBUG:
        # pydicom's value-validation messages quote the value ("Invalid value for VR DA: '19601301'"), which may be
        # patient data (birth date, ID, name): only at DEBUG, and not as warnings on stderr either
        logging.getLogger("pydicom").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom\.valuerep")


def log_event(logger: logging.Logger, level: int, message: str, **fields: Any) -> None:
    """Log ``message`` with structured ``fields`` (None values dropped)."""
    if logger.isEnabledFor(level):
        logger.log(level, message, extra={"fields": {k: v for k, v in fields.items() if v is not None}})
