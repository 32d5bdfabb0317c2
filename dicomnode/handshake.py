"""Why a server-side TLS handshake failed, in the words the listeners log and audit."""
from __future__ import annotations

import ssl


def handshake_failure(exc: OSError, timeout_seconds: float, aborted: str | None = None) -> str:
    """The reason for ``exc`` raised by a TLS handshake allowed ``timeout_seconds``; ``aborted``: why the node itself
    ended the connection meanwhile (named for a plain socket error)."""
    if isinstance(exc, TimeoutError):
        return f"no TLS handshake within {timeout_seconds:g} s"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or type(exc).__name__}"
    if aborted:
        return f"TLS handshake aborted ({aborted})"
    return f"TLS handshake failed: {type(exc).__name__}: {exc.strerror or exc}"
