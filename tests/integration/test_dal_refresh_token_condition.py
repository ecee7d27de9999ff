"""``dal.update_account_if_version(..., refresh_token_ciphertext=...)`` against the provisioned
table (moto): a rotated refresh token is written only over the grant it renewed."""

from __future__ import annotations


def test_a_write_conditional_on_the_refresh_token_needs_that_token(aws: dict[str, str]) -> None:
    from mailsync import dal
    from mailsync.domain import Account

    account = Account(
        tenant_id="acme",
        user_id="alice",
        host="imap.gmail.com",
        port=993,
        username="alice@gmail.com",
        security="ssl",
        auth="oauth2",
        provider="google",
        refresh_token_ciphertext=b"old-grant",
    )
    assert dal.create_account(account) is not None
    stale = dal.update_account_if_version(
        account, {"refresh_token_ciphertext": b"rotated"}, 1, refresh_token_ciphertext=b"another-grant"
    )
    assert stale is None
    stored = dal.get_account("acme", "alice")
    assert stored is not None and stored.refresh_token_ciphertext == b"old-grant"
    written = dal.update_account_if_version(
        account, {"refresh_token_ciphertext": b"rotated"}, 1, refresh_token_ciphertext=b"old-grant"
    )
    assert written is not None
    stored = dal.get_account("acme", "alice")
    assert stored is not None and stored.refresh_token_ciphertext == b"rotated"
