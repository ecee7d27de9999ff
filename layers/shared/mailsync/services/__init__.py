"""Use cases called by the handlers; they talk to storage only through ``mailsync.dal``."""
