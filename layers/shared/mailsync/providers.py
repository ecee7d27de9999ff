"""Pure: the OAuth2 mail providers Mailsync knows (Google, Microsoft): IMAP host and port,
scopes, and their endpoints as this deployment configures them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mailsync.config import Settings

ProviderName = Literal["google", "microsoft"]
PROVIDERS: tuple[ProviderName, ...] = ("google", "microsoft")


@dataclass(frozen=True)
class Preset:
    """What a provider's mailbox is: where IMAP lives and which scopes log in to it."""

    name: ProviderName
    imap_host: str
    imap_port: int
    scopes: tuple[str, ...]
    # Extra authorization parameters: Google hands out a refresh token only with offline
    # access, and again on a re-consent only when asked to show the consent screen.
    authorize_params: tuple[tuple[str, str], ...] = ()


PRESETS: dict[ProviderName, Preset] = {
    "google": Preset(
        name="google",
        imap_host="imap.gmail.com",
        imap_port=993,
        scopes=("openid", "email", "https://mail.google.com/"),
        authorize_params=(("access_type", "offline"), ("prompt", "consent")),
    ),
    "microsoft": Preset(
        name="microsoft",
        imap_host="outlook.office365.com",
        imap_port=993,
        scopes=("openid", "email", "offline_access", "https://outlook.office.com/IMAP.AccessAsUser.All"),
    ),
}


@dataclass(frozen=True)
class Endpoints:
    """A provider's client id, endpoints and IMAP server in this deployment (empty revoke_url:
    none offered)."""

    client_id: str
    issuer: str
    authorize_url: str
    token_url: str
    revoke_url: str
    userinfo_url: str
    imap_host: str
    imap_port: int


def endpoints(provider: ProviderName, settings: Settings) -> Endpoints:
    def get(field: str) -> str:
        return str(getattr(settings, f"oauth_{provider}_{field}"))

    return Endpoints(
        client_id=get("client_id"),
        issuer=get("issuer"),
        authorize_url=get("authorize_url"),
        token_url=get("token_url"),
        revoke_url=get("revoke_url"),
        userinfo_url=get("userinfo_url"),
        imap_host=get("imap_host"),
        imap_port=int(get("imap_port")),
    )


def provider_for_host(host: str) -> ProviderName | None:
    """The provider whose IMAP host this is (folder suggestions follow the provider's names)."""
    host = host.lower().rstrip(".")
    for preset in PRESETS.values():
        if host == preset.imap_host:
            return preset.name
    return None
