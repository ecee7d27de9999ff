"""What this deployment offers a settings screen: which security choices, which OAuth2 providers,
whether relay addresses exist (so a screen shows only what will be accepted)."""

from __future__ import annotations

from mailsync.config import Settings, get_settings
from mailsync.identity import Principal
from mailsync.providers import PROVIDERS, endpoints
from mailsync.schemas import DeploymentOut


def describe(principal: Principal, settings: Settings | None = None) -> DeploymentOut:
    """The same answer for every caller of every tenant: it says only what the API would refuse."""
    del principal  # any signed-in caller may ask; the argument keeps the route behind the authorizer
    settings = settings or get_settings()
    security = ["ssl", "starttls", *(["none"] if settings.allow_insecure else [])]
    providers = [name for name in PROVIDERS if endpoints(name, settings).client_id]
    return DeploymentOut(
        security=security,
        oauth_providers=providers,
        relay_addresses=bool(settings.relay_domain.strip()),
    )
