"""Per-project secrets, encrypted at rest, and the key behind invocation tokens.

One 32-byte master key lives in the control plane's state dir (`exec.key`, mode
0600, made on first use). Secrets are Fernet tokens (AES-128-CBC + HMAC-SHA256, from
`cryptography`) under a key derived from it; invocation tokens are signed with
another derived key. The database alone therefore reveals no secret and cannot mint
a token. Control planes sharing one PostgreSQL database must share this file.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from hoody.errors import HostError, InvalidInput

__all__ = ["KEY_FILE", "SecretBox", "check_secret_name"]

KEY_FILE = "exec.key"
_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,99}$")
# env names the runtime sets itself.
RESERVED = frozenset({"HOODY_API", "HOODY_TOKEN", "HOODY_PROJECT", "HOODY_SCRIPT"})
MAX_VALUE = 16 * 1024


def check_secret_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInput(
            f"secret name {str(name)[:40]!r} is invalid; use upper-case letters, digits "
            "and _ (e.g. STRIPE_WEBHOOK_SECRET)"
        )
    if name in RESERVED:
        raise InvalidInput(f"{name} is set by hoody for every invocation; pick another name")
    return name


class SecretBox:
    """Encrypts and decrypts secrets; signs and checks invocation tokens."""

    def __init__(self, master: bytes) -> None:
        if len(master) != 32:
            raise HostError("the exec key must be 32 bytes; delete it to make a new one")
        self._fernet = Fernet(base64.urlsafe_b64encode(_derive(master, b"secrets")))
        self.token_key = _derive(master, b"invocation tokens")

    @classmethod
    def open(cls, state_dir: Path) -> SecretBox:
        """The box of `state_dir/exec.key`, making the key (0600) when there is none."""
        path = state_dir / KEY_FILE
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return cls(path.read_bytes())
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(32))
        return cls(path.read_bytes())

    def seal(self, value: str) -> bytes:
        return self._fernet.encrypt(value.encode())

    def open_value(self, sealed: bytes) -> str:
        try:
            return self._fernet.decrypt(sealed).decode()
        except InvalidToken as exc:
            raise HostError(
                "a secret cannot be decrypted with this control plane's exec.key; "
                "control planes sharing a database must share that file"
            ) from exc


def _derive(master: bytes, purpose: bytes) -> bytes:
    return hmac.new(master, b"hoody exec " + purpose, hashlib.sha256).digest()
