"""Signed session cookies and the CSRF tokens of the dashboard's forms.

A login exchanges a token for a session cookie: the token's id and an expiry, signed with
HMAC-SHA256 under a key that lives only in the serving process (a restart logs everyone
out; nothing secret is written). The cookie is ``HttpOnly`` and ``SameSite=Strict``, and
every form carries a CSRF token bound to the session it was rendered for (or, for the login
form, to a nonce cookie set with it), checked in constant time on every POST.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass

__all__ = ["LOGIN_COOKIE", "SESSION_COOKIE", "SESSION_SECONDS", "LoginThrottle", "SessionSigner"]

SESSION_COOKIE = "oralfed_session"
LOGIN_COOKIE = "oralfed_login"
SESSION_SECONDS = 8 * 3600  # a working day


@dataclass(frozen=True)
class SessionSigner:
    """Signs and checks session cookies and CSRF tokens with one per-process key."""

    key: bytes

    @classmethod
    def fresh(cls) -> SessionSigner:
        return cls(secrets.token_bytes(32))

    def session_cookie(self, token_id: str, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + SESSION_SECONDS)
        body = f"{token_id}.{expires}"
        return f"{body}.{self._sign('session', body)}"

    def session_token_id(self, cookie: str | None, now: float | None = None) -> str | None:
        """The token id of a valid, unexpired session cookie, else None."""
        if not cookie or cookie.count(".") != 2:
            return None
        token_id, expires, signature = cookie.split(".")
        body = f"{token_id}.{expires}"
        if not _same(signature, self._sign("session", body)):
            return None
        if not expires.isdigit() or int(expires) < (time.time() if now is None else now):
            return None
        return token_id

    def csrf_token(self, bound_to: str) -> str:
        """The CSRF token of forms rendered for ``bound_to`` (a session cookie or nonce)."""
        return self._sign("csrf", bound_to)

    def csrf_ok(self, bound_to: str | None, token: str | None) -> bool:
        return bool(bound_to and token) and _same(str(token), self.csrf_token(str(bound_to)))

    def _sign(self, purpose: str, text: str) -> str:
        return hmac.new(self.key, f"{purpose}\n{text}".encode(), hashlib.sha256).hexdigest()


class LoginThrottle:
    """Refuses logins from an address that failed ``limit`` times in the last ``window``
    seconds: a token's secret has 256 bits, but every guess costs an scrypt hash of the
    server's time, so guessing is slowed down for the guesser and not for everyone else."""

    def __init__(self, limit: int = 10, window: float = 300.0) -> None:
        self.limit, self.window = limit, window
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def wait(self, address: str, now: float | None = None) -> float:
        """Seconds until ``address`` may try again (0: it may now)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            failures = self._failures.get(address)
            if failures is None:
                return 0.0
            while failures and failures[0] <= now - self.window:
                failures.popleft()
            if len(failures) < self.limit:
                return 0.0
            return failures[0] + self.window - now

    def failed(self, address: str, now: float | None = None) -> None:
        with self._lock:
            if len(self._failures) > 10_000:  # bounded whatever the number of addresses
                self._failures.clear()
            self._failures.setdefault(address, deque()).append(
                time.monotonic() if now is None else now
            )


def _same(given: str, expected: str) -> bool:
    """Constant-time equality of a value from the request (any text) and a hex digest."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode())
