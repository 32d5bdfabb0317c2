"""Who may use the dashboard: the configured secret (token or users file), login sessions and CSRF tokens.

Secrets are compared in constant time and never logged; a session is a random id in an HttpOnly, SameSite=Strict
cookie that names a server-side :class:`Session` (held in memory: a restart logs everyone out). Every POST carries
the session's CSRF token; a request authenticated by an ``Authorization`` header carries no cookie, so no other
site can make a browser send it, and it needs no CSRF token.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from dicomnode.config import DashboardAuth

SESSION_COOKIE = "cxr_dashboard_session"
LOGIN_COOKIE = "cxr_dashboard_login"  # double-submit CSRF token of the login form (no session yet)
HASH_SCHEME = "pbkdf2_sha256"
HASH_ITERATIONS = 600_000
MAX_SESSIONS = 1000


class AuthSetupError(RuntimeError):
    """The configured secret cannot be used (variable unset, file missing or malformed)."""


def hash_password(password: str, iterations: int = HASH_ITERATIONS, salt: bytes | None = None) -> str:
    """``pbkdf2_sha256$ITERATIONS$SALT$HASH`` (base64) for a users file line ``name:<this>``."""
    salt = salt or os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"{HASH_SCHEME}${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, iterations, salt, digest = encoded.split("$")
        if scheme != HASH_SCHEME:
            return False
        candidate = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
    except ValueError:
        return False
    return hmac.compare_digest(candidate, base64.b64decode(digest))


def read_users_file(path: Path) -> dict[str, str]:
    """``{name: encoded hash}`` from ``name:hash`` lines (``#`` comments and blank lines skipped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AuthSetupError(f"dashboard users file {path}: {exc.strerror or exc}") from None
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, encoded = line.partition(":")
        if not sep or not name or not encoded.startswith(HASH_SCHEME + "$"):
            raise AuthSetupError(f"dashboard users file {path} line {number}: expected name:{HASH_SCHEME}$... "
                                 f"(see cxr-node dashboard hash-password)")
        users[name] = encoded
    if not users:
        raise AuthSetupError(f"dashboard users file {path} names no user")
    return users


class Authenticator:
    """Checks credentials against the configured secret; ``None`` config means no auth (loopback only)."""

    def __init__(self, auth: DashboardAuth | None, environ: dict[str, str] | None = None) -> None:
        self.type = auth.type if auth else None
        self._token: str | None = None
        self._users: dict[str, str] = {}
        # Basic headers proven once, by a keyed digest (PBKDF2 costs ~0.3 s; a script sends the header each time)
        self._proven: dict[bytes, str] = {}
        self._digest_key = os.urandom(32)
        environ = dict(os.environ if environ is None else environ)
        if auth is not None and auth.type == "token":
            assert auth.token_env is not None
            token = environ.get(auth.token_env, "")
            if len(token) < 16:
                raise AuthSetupError(f"dashboard auth: environment variable {auth.token_env} must hold the token "
                                     f"(at least 16 characters); it is {'too short' if token else 'not set'}")
            self._token = token
        elif auth is not None and auth.users_file is not None:
            self._users = read_users_file(auth.users_file)

    @property
    def enabled(self) -> bool:
        return self.type is not None

    def check_token(self, token: str) -> bool:
        return self._token is not None and hmac.compare_digest(token.encode(), self._token.encode())

    def check_user(self, name: str, password: str) -> bool:
        encoded = self._users.get(name)
        if encoded is None:
            verify_password(password, hash_password("x", iterations=HASH_ITERATIONS, salt=b"0" * 16))  # same time
            return False
        return verify_password(password, encoded)

    def check_login(self, user: str, secret: str) -> str | None:
        """The user name for a login form's fields, else None."""
        if self.type == "token":
            return "token" if self.check_token(secret) else None
        if self.type == "basic":
            return user if user and self.check_user(user, secret) else None
        return None

    def check_header(self, header: str | None) -> str | None:
        """The user name an ``Authorization`` header proves, else None."""
        if not header:
            return None
        kind, _, value = header.partition(" ")
        value = value.strip()
        if kind.lower() == "bearer" and self.type == "token":
            return "token" if self.check_token(value) else None
        if kind.lower() == "basic" and self.type == "basic":
            digest = hmac.new(self._digest_key, value.encode(), hashlib.sha256).digest()
            if digest in self._proven:
                return self._proven[digest]
            try:
                user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            if not self.check_user(user, password):
                return None
            if len(self._proven) >= MAX_SESSIONS:
                self._proven.clear()
            self._proven[digest] = user
            return user
        return None


@dataclass
class Session:
    user: str
    csrf: str
    expires: float


class SessionStore:
    """Login sessions in memory: ``{random id: Session}``, expiring after ``lifetime_s``."""

    def __init__(self, lifetime_s: float) -> None:
        self.lifetime_s = lifetime_s
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, user: str) -> tuple[str, Session]:
        session_id = secrets.token_urlsafe(32)
        session = Session(user, secrets.token_urlsafe(32), time.monotonic() + self.lifetime_s)
        with self._lock:
            self._expire()
            if len(self._sessions) >= MAX_SESSIONS:  # drop the oldest rather than grow without bound
                oldest = min(self._sessions, key=lambda k: self._sessions[k].expires)
                del self._sessions[oldest]
            self._sessions[session_id] = session
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and session.expires < time.monotonic():
                del self._sessions[session_id]
                return None
            return session

    def drop(self, session_id: str | None) -> None:
        with self._lock:
            self._sessions.pop(session_id or "", None)

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, s in self._sessions.items() if s.expires < now]:
            del self._sessions[key]


def same_token(given: str | None, expected: str | None) -> bool:
    """Constant-time equality of two CSRF tokens; False when either is missing."""
    return bool(given and expected) and hmac.compare_digest(str(given).encode(), str(expected).encode())
