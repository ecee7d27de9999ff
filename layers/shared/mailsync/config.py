"""Settings read once from the environment into a validated model."""

from __future__ import annotations

import os
from functools import lru_cache

from pydantic import BaseModel, Field


def _flag(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


class Settings(BaseModel):
    """Deployment settings. Names of the environment variables are in ``from_env``."""

    accounts_table: str = "mailsync-accounts"
    messages_table: str = "mailsync-messages"
    idempotency_table: str = "mailsync-idempotency"
    raw_mail_bucket: str = "mailsync-raw-mail"
    sync_queue_url: str = ""
    event_bus_name: str = "default"
    credentials_key_id: str = ""
    # SSRF guard: deployed stacks must not let a tenant point us at internal addresses.
    allow_private_hosts: bool = False
    # `security: none` sends passwords in clear text; only a deployment may opt in.
    allow_insecure: bool = False
    extra_ca_file: str | None = None
    imap_timeout_seconds: float = Field(default=20.0, gt=0, le=300)
    host_concurrency: int = Field(default=5, ge=1)
    # Scheduler: accounts spread over this many due-index partitions (one Query each per tick).
    due_shards: int = Field(default=16, ge=1, le=1000)
    claim_user: str = "sub"
    claim_tenant: str = "tenant_id"
    claim_role: str = "role"
    admin_role: str = "admin"
    # Budgets against hostile or broken mail servers (and poison mail); exceeding one is
    # ``server_misbehaving`` for that account only. See README "Budgets".
    job_budget_seconds: float = Field(default=120.0, gt=0, le=900)
    max_line_bytes: int = Field(default=1_000_000, ge=1024)
    max_message_bytes: int = Field(default=50_000_000, ge=1024)
    max_untagged_per_command: int = Field(default=200_000, ge=10)
    max_folders: int = Field(default=5_000, ge=1)
    max_pop3_response_bytes: int = Field(default=60_000_000, ge=1024)

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        values: dict[str, object] = {
            "accounts_table": env.get("ACCOUNTS_TABLE"),
            "messages_table": env.get("MESSAGES_TABLE"),
            "idempotency_table": env.get("IDEMPOTENCY_TABLE"),
            "raw_mail_bucket": env.get("RAW_MAIL_BUCKET"),
            "sync_queue_url": env.get("SYNC_QUEUE_URL"),
            "event_bus_name": env.get("EVENT_BUS_NAME"),
            "credentials_key_id": env.get("CREDENTIALS_KEY_ID"),
            "allow_private_hosts": _flag("MAILSYNC_ALLOW_PRIVATE_HOSTS"),
            "allow_insecure": _flag("MAILSYNC_ALLOW_INSECURE"),
            "extra_ca_file": env.get("MAILSYNC_EXTRA_CA_FILE") or None,
            "imap_timeout_seconds": env.get("MAILSYNC_IMAP_TIMEOUT_SECONDS"),
            "host_concurrency": env.get("MAILSYNC_HOST_CONCURRENCY"),
            "due_shards": env.get("MAILSYNC_DUE_SHARDS"),
            "claim_user": env.get("MAILSYNC_CLAIM_USER"),
            "claim_tenant": env.get("MAILSYNC_CLAIM_TENANT"),
            "claim_role": env.get("MAILSYNC_CLAIM_ROLE"),
            "admin_role": env.get("MAILSYNC_ADMIN_ROLE"),
            "job_budget_seconds": env.get("MAILSYNC_JOB_BUDGET_SECONDS"),
            "max_line_bytes": env.get("MAILSYNC_MAX_LINE_BYTES"),
            "max_message_bytes": env.get("MAILSYNC_MAX_MESSAGE_BYTES"),
            "max_untagged_per_command": env.get("MAILSYNC_MAX_UNTAGGED_PER_COMMAND"),
            "max_folders": env.get("MAILSYNC_MAX_FOLDERS"),
            "max_pop3_response_bytes": env.get("MAILSYNC_MAX_POP3_RESPONSE_BYTES"),
        }
        return cls(**{k: v for k, v in values.items() if v not in (None, "")})


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; tests call ``get_settings.cache_clear()`` after changing the env."""
    return Settings.from_env()
