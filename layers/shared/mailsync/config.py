"""Settings read once from the environment into a validated model (pydantic-settings)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Deployment settings: each field from ``MAILSYNC_<FIELD>`` unless it names its variable.

    The resources' names (tables, bucket, queue, bus, key) come from the variables the template
    has always set. An empty variable counts as unset.
    """

    model_config = SettingsConfigDict(env_prefix="MAILSYNC_", env_ignore_empty=True, validate_by_name=True)

    accounts_table: str = Field(default="mailsync-accounts", validation_alias="ACCOUNTS_TABLE")
    messages_table: str = Field(default="mailsync-messages", validation_alias="MESSAGES_TABLE")
    idempotency_table: str = Field(default="mailsync-idempotency", validation_alias="IDEMPOTENCY_TABLE")
    raw_mail_bucket: str = Field(default="mailsync-raw-mail", validation_alias="RAW_MAIL_BUCKET")
    sync_queue_url: str = Field(default="", validation_alias="SYNC_QUEUE_URL")
    event_bus_name: str = Field(default="default", validation_alias="EVENT_BUS_NAME")
    credentials_key_id: str = Field(default="", validation_alias="CREDENTIALS_KEY_ID")
    # SSRF guard: deployed stacks must not let a tenant point us at internal addresses.
    allow_private_hosts: bool = False
    # `security: none` sends passwords in clear text; only a deployment may opt in.
    allow_insecure: bool = False
    extra_ca_file: str | None = None
    imap_timeout_seconds: float = Field(default=20.0, gt=0, le=300)
    # Connections one worker process opens to one mail host (see mailbox.limits: the big
    # providers have larger defaults); ``host=n,host=n`` overrides per host.
    host_concurrency: int = Field(default=10, ge=1, le=1000)
    host_concurrency_overrides: str = ""
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
    # Servers without CONDSTORE (Courier, Exchange) show a flag change nowhere in STATUS: their
    # full flag scan runs when STATUS changed, else at most this often (0: every sync).
    flag_scan_minutes: float = Field(default=15.0, ge=0, le=1440)
    # Swagger UI keeps a pasted token in the browser's localStorage: the local stack only.
    swagger_persist_authorization: bool = False

    @field_validator("host_concurrency_overrides")
    @classmethod
    def _overrides(cls, raw: str) -> str:
        parse_overrides(raw)  # a typo fails at start-up, not at the first sync of that host
        return raw

    def host_concurrency_by_host(self) -> dict[str, int]:
        return parse_overrides(self.host_concurrency_overrides)

    @field_validator("allow_private_hosts", "allow_insecure", mode="before")
    @classmethod
    def _flag(cls, raw: object) -> object:
        # A guard is lowered only by a clear yes; anything else a deployment writes keeps it up.
        if isinstance(raw, str):
            return raw.strip().lower() in {"1", "true", "yes", "on"}
        return raw


def parse_overrides(text: str) -> dict[str, int]:
    """``"imap.example.com=20, mail.example.org=2"`` -> per host limits; a bad entry is a ValueError."""
    out: dict[str, int] = {}
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        host, sep, count = entry.partition("=")
        if not sep or not host.strip() or not count.strip().isdigit() or int(count) < 1:
            raise ValueError(f"host concurrency override {entry!r} is not host=n with n >= 1")
        out[host.strip().lower()] = int(count)
    return out


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; tests call ``get_settings.cache_clear()`` after changing the env."""
    return Settings()
