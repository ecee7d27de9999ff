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
    # Fan-out: one sync job (SQS message) carries up to this many accounts of one due shard.
    sync_group_size: int = Field(default=100, ge=1, le=500)
    # Worker: accounts synced at once in one invocation. A poll mostly waits on the network (and
    # the invocation is billed for that wait), so 64 threads; at most sync_jobs.SYNCS_WITH_WORK of
    # them hold mail in memory at once.
    worker_threads: int = Field(default=64, ge=1, le=64)
    # The scheduler's EventBridge expression (template ScheduleRate): outside office hours an
    # account is polled on its slot of these ticks (sync.planner.polling).
    schedule_rate: str = Field(default="rate(1 minute)", max_length=200)
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
    # The domain of the per-user relay addresses (SES receives its mail); empty: no relay.
    relay_domain: str = ""
    # Swagger UI keeps a pasted token in the browser's localStorage: the local stack only.
    swagger_persist_authorization: bool = False
    # OAuth2 mailboxes (Google, Microsoft). Client ids are public; the client secrets (and the key
    # that signs a consent's `state`) live in one Secrets Manager secret, never in a variable:
    # JSON {"google_client_secret", "microsoft_client_secret", "state_key"}.
    oauth_google_client_id: str = ""
    oauth_microsoft_client_id: str = ""
    oauth_client_secret_arn: str = ""
    # Endpoints, so that tests and other identity providers can point elsewhere.
    oauth_google_issuer: str = "https://accounts.google.com"
    oauth_google_authorize_url: str = "https://accounts.google.com/o/oauth2/v2/auth"
    oauth_google_token_url: str = "https://oauth2.googleapis.com/token"  # noqa: S105 (a URL)
    oauth_google_revoke_url: str = "https://oauth2.googleapis.com/revoke"
    oauth_google_userinfo_url: str = "https://openidconnect.googleapis.com/v1/userinfo"
    # "organizations": work and school accounts of any Microsoft Entra tenant.
    oauth_microsoft_issuer: str = "https://login.microsoftonline.com/organizations/v2.0"
    oauth_microsoft_authorize_url: str = "https://login.microsoftonline.com/organizations/oauth2/v2.0/authorize"
    oauth_microsoft_token_url: str = "https://login.microsoftonline.com/organizations/oauth2/v2.0/token"  # noqa: S105 (a URL)
    # Microsoft offers no revocation endpoint for a single refresh token.
    oauth_microsoft_revoke_url: str = ""
    oauth_microsoft_userinfo_url: str = "https://graph.microsoft.com/oidc/userinfo"
    # The providers' IMAP servers (tests point them at a local server).
    oauth_google_imap_host: str = "imap.gmail.com"
    oauth_google_imap_port: int = Field(default=993, ge=1, le=65535)
    oauth_microsoft_imap_host: str = "outlook.office365.com"
    oauth_microsoft_imap_port: int = Field(default=993, ge=1, le=65535)
    # Where the provider sends the browser back (the callback route, as registered with the
    # provider); empty: https://<the API's own domain>/v1/oauth/callback.
    oauth_redirect_uri: str = ""
    # Origins (scheme://host[:port]) a consent may return to, comma separated; empty: none.
    oauth_return_origins: str = ""
    oauth_state_ttl_seconds: int = Field(default=600, ge=60, le=3600)
    # Total per request; the callback makes two (code, userinfo) within the API's 29 s.
    oauth_http_timeout_seconds: float = Field(default=10.0, gt=0, le=12)

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
