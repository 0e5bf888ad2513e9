"""Model fields: text stored encrypted at rest (Fernet, keys from the environment).

``FIELD_ENCRYPTION_KEY`` holds one or more Fernet keys, comma-separated: the
first encrypts, all decrypt, so a key is rotated by putting the new one first
(``manage.py rotate_secrets`` then re-encrypts the rows with it). Under
``DJANGO_DEV`` a key derived from SECRET_KEY is used when none is set; in
production a missing key is an error at the first use, never a silent
plaintext write.
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    try:
        return MultiFernet([Fernet(key.encode()) for key in keys])
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(
            "FIELD_ENCRYPTION_KEY must be Fernet keys (32 url-safe base64 bytes), "
            'e.g. python -c "from cryptography.fernet import Fernet; '
            'print(Fernet.generate_key().decode())"'
        ) from exc


def _keys() -> tuple[str, ...]:
    keys = tuple(k.strip() for k in settings.FIELD_ENCRYPTION_KEY if k.strip())
    if keys:
        return keys
    if settings.DEV:
        digest = hashlib.sha256(f"vocoeng-fields:{settings.SECRET_KEY}".encode())
        return (base64.urlsafe_b64encode(digest.digest()).decode(),)
    raise ImproperlyConfigured(
        "FIELD_ENCRYPTION_KEY is not set: channel and tool secrets are stored "
        "encrypted and need a key (see README, 'Tenants and channels')."
    )


def encrypt(value: str) -> str:
    """Return ``value`` encrypted with the first key (a Fernet token)."""
    return _fernet(_keys()).encrypt(value.encode()).decode()


def decrypt(token: str) -> str:
    """Return the plaintext of a token made with any configured key."""
    try:
        return _fernet(_keys()).decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise ImproperlyConfigured(
            "a stored secret cannot be decrypted with FIELD_ENCRYPTION_KEY "
            "(was the key changed without keeping the old one after it?)"
        ) from exc


class EncryptedTextField(models.TextField):
    """Keep a secret encrypted in the database; Python code sees plaintext.

    The empty string means "not set" and is stored as is. Lookups other than
    ``isnull`` / ``exact ''`` make no sense on ciphertext; do not filter on it.
    """

    description = "Text encrypted at rest"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("blank", True)
        kwargs.setdefault("default", "")
        super().__init__(*args, **kwargs)

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        if not value:
            return value
        return decrypt(value)

    def to_python(self, value: Any) -> Any:
        return value

    def get_prep_value(self, value: Any) -> Any:
        value = super().get_prep_value(value)
        if not value:
            return value
        return encrypt(value)
