"""Password hashing with the standard library's scrypt (no extra dependency on the head).

Stored as `scrypt$N$r$p$salt$hash` (salt and hash in URL-safe base64), so the cost can be
raised later without breaking the hashes already stored: each carries its own parameters.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from functools import cache
from typing import Final

# N=2**14, r=8: 16 MiB and about 50 ms on a Pi 4, 15 ms here: slow for a guesser, quick
# enough for a login. p=1: a Pi has few cores to spare.
N: Final = 2**14
R: Final = 8
P: Final = 1
SALT_BYTES: Final = 16
HASH_BYTES: Final = 32
MIN_LENGTH: Final = 8
_MAX_MEMORY: Final = 64 * 1024 * 1024


class PasswordError(ValueError):
    """A password too short (or otherwise refused), with the reason."""


def check_new_password(password: str) -> None:
    """Refuse a password too short to resist guessing."""
    if len(password) < MIN_LENGTH:
        raise PasswordError(f"a password needs at least {MIN_LENGTH} characters")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAX_MEMORY, dklen=HASH_BYTES
    )


def hash_password(password: str) -> str:
    """The stored form of a new password (a fresh random salt each time)."""
    salt = secrets.token_bytes(SALT_BYTES)
    return f"scrypt${N}${R}${P}${_b64(salt)}${_b64(_derive(password, salt, N, R, P))}"


def verify_password(password: str, stored: str) -> bool:
    """True when `password` is the one `stored` was made from; False for any malformed hash."""
    try:
        scheme, n, r, p, salt, expected = stored.split("$")
        if scheme != "scrypt":
            return False
        derived = _derive(password, _unb64(salt), int(n), int(r), int(p))
        return hmac.compare_digest(derived, _unb64(expected))
    except (ValueError, MemoryError):
        return False


def dummy_verify(password: str) -> None:
    """Spend a verification's time for an unknown user, so timing does not tell who exists."""
    verify_password(password, _dummy_hash())


@cache
def _dummy_hash() -> str:
    return hash_password(secrets.token_urlsafe(16))
