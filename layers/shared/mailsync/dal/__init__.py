"""All DynamoDB access, behind domain values (``mailsync.domain``) in and out.

Two tables. The accounts table holds one item per CRM user (settings, folder map, status,
due time, last activity) and two per tenant (privacy settings; office hours). The messages
table is a single-table design keyed by ``pk``/``sk``:

==========================  =======================================  ============================
item                        pk                                       sk
==========================  =======================================  ============================
message                     ``M#{id}``                               ``M``
location (synced copy)      ``A#{t}#{u}#L#{server folder}``          ``{uidvalidity}#{uid}``
window (legacy)             ``A#{t}#{u}#W#{server folder}``          ``{internal date}#{uidvalidity}#{uid}``
match key (Message-ID/hash) ``A#{t}#{u}#K#{key}``                    ``{id}``
sync state + lease          ``A#{t}#{u}``                            ``STATE``
pending CRM change (op)     ``A#{t}#{u}#OPS``                        ``{sequence number}``
thread mark / member        ``A#{t}#{u}#T#{thread}``                 ``THREAD`` / ``M#{id}``
dossier entry               ``C#{t}#{address}``                      ``{internal date}#{id}``
relay address -> user       ``R#{local part}``                       ``RELAY``
user -> relay address       ``A#{t}#{u}``                            ``RELAY``
POP3 message seen (UIDL)    ``A#{t}#{u}#P#{server}``                 ``{uidl}``
==========================  =======================================  ============================

Messages are listed newest first through ``gsi1`` (account) and ``gsi2`` (account + CRM folder),
both sorted by ``{internal date}#{id}`` and projecting only what the listings filter on
(``seen``, ``confidential``): a page's messages are then read by key. Models (``_models``),
key and cursor formats (``_keys``) and item factories (``_items``) are private to this package;
cursors leave it as opaque strings. Window items are only read to be deleted: earlier builds
wrote one per location; aging out now filters the locations by their INTERNALDATE (``aged_out``).
Table names are read from the settings on use: nothing binds them.

"""

from mailsync.dal._connections import open_connections
from mailsync.dal._consents import find_consent, save_consent, take_consent
from mailsync.dal._keys import BadCursor
from mailsync.dal._models import utcnow
from mailsync.dal._pop import forget_pop_seen, pop_seen, record_pop_seen
from mailsync.dal._relay import (
    create_relay_address,
    relay_address_of,
    relay_user,
    rotate_relay_address,
    store_relayed,
)
from mailsync.dal._store import (
    TENANT_SETTINGS_MAX_AGE_SECONDS,
    Unstorable,
    account_exists,
    aged_out,
    contact_messages,
    count_attempt,
    count_locations,
    create_account,
    create_outgoing,
    delete_account,
    detach,
    drop,
    due_accounts,
    fail_pending_ops,
    find_locations,
    find_message,
    find_messages,
    finish_op,
    folder_locations,
    forget_folder_windows,
    forget_sync_state,
    forget_tenant_settings,
    get_account,
    get_account_and_sync_state,
    get_accounts_and_sync_states,
    get_office_hours,
    get_sync_state,
    get_tenant_settings,
    give_back_lease,
    idempotency_store,
    ids_for_match_key,
    list_accounts,
    list_messages,
    mark_threads,
    oauth_grant_holders,
    ops_waiting,
    put_accounts,
    record_activity,
    record_changes,
    relink,
    save_checkpoint,
    save_office_hours,
    save_tenant_settings,
    set_confidential,
    set_flags,
    store_new_messages,
    take_lease,
    thread_marks,
    thread_member_ids,
    update_account,
    update_account_if_version,
    update_account_status,
)

__all__ = [
    "TENANT_SETTINGS_MAX_AGE_SECONDS",
    "BadCursor",
    "Unstorable",
    "account_exists",
    "aged_out",
    "contact_messages",
    "count_attempt",
    "count_locations",
    "create_account",
    "create_outgoing",
    "create_relay_address",
    "delete_account",
    "detach",
    "drop",
    "due_accounts",
    "fail_pending_ops",
    "find_consent",
    "find_locations",
    "find_message",
    "find_messages",
    "finish_op",
    "folder_locations",
    "forget_folder_windows",
    "forget_pop_seen",
    "forget_sync_state",
    "forget_tenant_settings",
    "get_account",
    "get_account_and_sync_state",
    "get_accounts_and_sync_states",
    "get_office_hours",
    "get_sync_state",
    "get_tenant_settings",
    "give_back_lease",
    "idempotency_store",
    "ids_for_match_key",
    "list_accounts",
    "list_messages",
    "mark_threads",
    "oauth_grant_holders",
    "open_connections",
    "ops_waiting",
    "pop_seen",
    "put_accounts",
    "record_activity",
    "record_changes",
    "record_pop_seen",
    "relay_address_of",
    "relay_user",
    "relink",
    "rotate_relay_address",
    "save_checkpoint",
    "save_consent",
    "save_office_hours",
    "save_tenant_settings",
    "set_confidential",
    "set_flags",
    "store_new_messages",
    "store_relayed",
    "take_consent",
    "take_lease",
    "thread_marks",
    "thread_member_ids",
    "update_account",
    "update_account_if_version",
    "update_account_status",
    "utcnow",
]
