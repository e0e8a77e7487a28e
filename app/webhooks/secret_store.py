"""Signing secrets at rest: encrypted with WEBHOOK_SECRETS_KEY when it is set.

Signing needs the secret itself (HMAC), so it cannot be stored as a hash. With
WEBHOOK_SECRETS_KEY (a Fernet key: `python -c "from cryptography.fernet import Fernet;
print(Fernet.generate_key().decode())"`) the column holds `fernet:<token>` (AES-128-CBC with
HMAC-SHA256, authenticated); without it, the secret as is. The setting may hold several keys,
comma-separated: the first encrypts, each decrypts, so the key can be rotated (set "new,old";
secrets written under the old key keep working until they are rotated).
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from app.errors import AppError, ConfigurationError

SEALED_PREFIX = "fernet:"


class SecretUnavailable(AppError):
    """A stored secret is encrypted and no configured key opens it."""

    code = "secret_unavailable"


def _keys(setting: str | None) -> MultiFernet | None:
    if not setting:
        return None
    parts = [part.strip() for part in setting.split(",") if part.strip()]
    try:
        return MultiFernet([Fernet(part) for part in parts]) if parts else None
    except ValueError as exc:
        raise ConfigurationError(f"WEBHOOK_SECRETS_KEY: not a Fernet key ({exc})") from None


def check_key_setting(setting: str | None) -> None:
    """Raise `ConfigurationError` unless the setting is empty or a list of Fernet keys."""
    _keys(setting)


def seal(secret: str, key_setting: str | None) -> str:
    """The form a secret is stored in."""
    keys = _keys(key_setting)
    if keys is None:
        return secret
    return SEALED_PREFIX + keys.encrypt(secret.encode()).decode()


def reveal(stored: str | None, key_setting: str | None) -> str | None:
    """The secret a stored value holds (None stays None)."""
    if stored is None or not stored.startswith(SEALED_PREFIX):
        return stored
    keys = _keys(key_setting)
    if keys is None:
        raise SecretUnavailable("the signing secret is encrypted and WEBHOOK_SECRETS_KEY is not set")
    try:
        return keys.decrypt(stored.removeprefix(SEALED_PREFIX).encode()).decode()
    except InvalidToken:
        raise SecretUnavailable("no key in WEBHOOK_SECRETS_KEY opens the signing secret") from None
