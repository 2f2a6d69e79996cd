"""Passwords: argon2id hashes (argon2-cffi's defaults, RFC 9106's second recommendation) and a strength rule.

The rule is the one NIST SP 800-63B gives: length matters, composition rules do not;
refuse the obviously guessable (too short, a run of one character, the user's own
name, a well-known password). Each refusal says why, so IT staff can pass it on.
"""

from __future__ import annotations

import unicodedata
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MIN_LENGTH = 10
MAX_LENGTH = 256
#: The commonest passwords (and their Vietnamese favourites), refused whatever their length.
_COMMON = frozenset({
    "123456789", "1234567890", "12345678910", "password", "password1", "password123", "qwertyuiop",
    "1q2w3e4r5t", "abc123456", "iloveyou", "11111111111", "0123456789", "matkhau", "matkhau123",
    "anhyeuem", "anhyeuem123", "emyeuanh", "benhvien", "benhvien123", "admin12345", "administrator",
    "changeme123", "welcome123", "angiang123", "quantri123",
})

_hasher = PasswordHasher()  # argon2id, 64 MiB, t=3, p=4


class WeakPassword(ValueError):
    """The password is refused; the message says why."""


def check_strength(password: str, username: str) -> None:
    text = unicodedata.normalize("NFC", password)
    if len(text) < MIN_LENGTH:
        raise WeakPassword(f"The password is too short: at least {MIN_LENGTH} characters, a phrase is best")
    if len(text) > MAX_LENGTH:
        raise WeakPassword(f"The password is longer than {MAX_LENGTH} characters")
    if len(set(text)) < 4:
        raise WeakPassword("The password repeats too few different characters")
    folded = text.casefold()
    if folded in _COMMON or folded.rstrip("!@#.0123456789") in _COMMON:
        raise WeakPassword("The password is one of the most common passwords")
    if len(username) >= 4 and username.casefold() in folded:  # "an" may well be part of a good phrase
        raise WeakPassword("The password contains the user name")


def hash_password(password: str) -> str:
    return _hasher.hash(unicodedata.normalize("NFC", password))


def verify_password(stored_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash, unicodedata.normalize("NFC", password))
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    return _hasher.check_needs_rehash(stored_hash)


@cache
def dummy_hash() -> str:
    """A hash to verify against when the user does not exist, so a wrong name costs what a wrong password
    costs (made on first use: hashing takes a tenth of a second, which commands should not pay)."""
    return _hasher.hash("not a password of anyone")
