"""What /v1/deployment tells a settings screen: only what the API would accept."""

from __future__ import annotations

from mailsync.config import Settings
from mailsync.identity import Principal
from mailsync.services import deployment

ALICE = Principal(user_id="alice", tenant_id="acme", is_admin=False)


def test_a_locked_down_deployment_offers_encrypted_security_only_and_no_connect_buttons() -> None:
    out = deployment.describe(ALICE, Settings(allow_insecure=False, relay_domain=""))
    assert (out.security, out.oauth_providers, out.relay_addresses) == (["ssl", "starttls"], [], False)


def test_none_and_providers_appear_only_where_configured() -> None:
    settings = Settings(allow_insecure=True, oauth_microsoft_client_id="app-id", relay_domain="relay.example.com")
    out = deployment.describe(ALICE, settings)
    assert (out.security, out.oauth_providers, out.relay_addresses) == (
        ["ssl", "starttls", "none"],
        ["microsoft"],
        True,
    )
