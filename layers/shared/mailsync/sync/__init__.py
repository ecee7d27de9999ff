"""The sync engine: ``planner`` (pure: state in, decisions out) and ``engine`` (runs them with
the IMAP reader, the blob store, the data-access module and the event bus)."""
