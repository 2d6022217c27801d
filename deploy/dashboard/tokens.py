"""Who may log in to a dashboard: the holders of its tokens, stored only as salted hashes.

A coordinator's dashboard accepts the researchers' insights API tokens (the coordinator
database's, :mod:`oralfed.server.insights_api`), so that its query form spends the same ε cap
as the API. A clinic has no coordinator database: its privacy officer's dashboard tokens are
kept in the clinic's state dir (``dashboard-tokens.json``, salted scrypt hashes like the
API's, never the secret), created with ``oralfed dashboard token create``.
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oralfed.schemas.errors import ExitCode, OralFedError
from oralfed.schemas.files import write_text_atomically
from oralfed.server.coordinator_db import CoordinatorStore
from oralfed.server.insights_api import authenticate, hash_secret

__all__ = [
    "DASHBOARD_TOKENS_FILE",
    "DashboardTokenError",
    "Holder",
    "TokenCheck",
    "clinic_token_check",
    "coordinator_token_check",
    "create_clinic_token",
    "read_clinic_tokens",
]

DASHBOARD_TOKENS_FILE = "dashboard-tokens.json"
CLINIC_TOKEN_PREFIX = "ofd"
_TOKEN_SHAPE = re.compile(rf"^{CLINIC_TOKEN_PREFIX}_([0-9a-f]{{16}})\.([A-Za-z0-9_-]{{20,64}})$")


class DashboardTokenError(OralFedError):
    """A dashboard token that cannot be created or a token file that cannot be read."""

    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class Holder:
    """A logged-in token: its id (what a session remembers) and the name it was made for."""

    token_id: str
    name: str


# A token's text to its holder, or None for a wrong or unknown token.
TokenCheck = Callable[[str], Holder | None]


def create_clinic_token(state_dir: Path, name: str) -> str:
    """A new dashboard token for ``name`` at the clinic of ``state_dir``; the secret is
    returned once and only its salted hash is written (the file is replaced atomically)."""
    if not name.strip() or len(name) > 128:
        raise DashboardTokenError("a token name must be 1 to 128 characters")
    if not state_dir.is_dir():
        raise DashboardTokenError(f"state dir {state_dir}: no such directory")
    tokens = read_clinic_tokens(state_dir)
    if any(entry["name"] == name for entry in tokens.values()):
        raise DashboardTokenError(f"{state_dir / DASHBOARD_TOKENS_FILE}: {name!r} has a token")
    token_id, secret, salt = secrets.token_hex(8), secrets.token_urlsafe(32), secrets.token_hex(16)
    tokens[token_id] = {"name": name, "salt": salt, "secret_hash": hash_secret(secret, salt)}
    text = json.dumps(tokens, indent=2, sort_keys=True)
    write_text_atomically(state_dir / DASHBOARD_TOKENS_FILE, text, mode=0o600)
    return f"{CLINIC_TOKEN_PREFIX}_{token_id}.{secret}"


def clinic_token_check(state_dir: Path) -> TokenCheck:
    """Checks a token against the clinic's token file as it is at each login."""

    def check(text: str) -> Holder | None:
        match = _TOKEN_SHAPE.match(text.strip())
        if match is None:
            return None
        token_id, secret = match.groups()
        entry = read_clinic_tokens(state_dir).get(token_id)
        if entry is None or not hmac.compare_digest(
            entry["secret_hash"], hash_secret(secret, entry["salt"])
        ):
            return None
        return Holder(token_id, entry["name"])

    return check


def coordinator_token_check(store: CoordinatorStore) -> TokenCheck:
    """Checks an insights API token against the coordinator database."""

    def check(text: str) -> Holder | None:
        info = authenticate(store, f"Bearer {text.strip()}")
        return None if info is None else Holder(info.token_id, info.name)

    return check


def read_clinic_tokens(state_dir: Path) -> dict[str, dict[str, Any]]:
    """The clinic's dashboard tokens by id (name, salt, hash); none without a token file."""
    path = state_dir / DASHBOARD_TOKENS_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DashboardTokenError(f"{path}: unreadable token file ({error})") from None
    valid = isinstance(data, dict) and all(
        isinstance(entry, dict)
        and isinstance(entry.get("name"), str)
        and isinstance(entry.get("secret_hash"), str)
        and re.fullmatch("[0-9a-f]{64,512}", entry["secret_hash"]) is not None
        and isinstance(entry.get("salt"), str)
        and re.fullmatch("[0-9a-f]{32}", entry["salt"]) is not None
        for entry in data.values()
    )
    if not valid:
        raise DashboardTokenError(f"{path}: not a dashboard token file")
    return data
