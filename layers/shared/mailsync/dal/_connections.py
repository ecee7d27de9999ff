"""Opening the models' DynamoDB clients up front, before threads share them (private to ``dal``).

PynamoDB gives every model class its own connection and creates its botocore client on first
use, from a botocore session per thread. Threads that first touch a model at the same moment
would each build a session and a client (tens of milliseconds of CPU each, one of them thrown
away); once a client exists, sharing it between threads is safe. So the sync worker calls
``open_connections`` in its main thread before it starts syncing accounts concurrently.
"""

from __future__ import annotations

from pynamodb.models import Model

from mailsync.dal import _models


def _models_with_tables() -> list[type[Model]]:
    """The models items are read and written through. Not their common bases: a base's
    connection would be inherited by the subclasses that have none yet, with the base's table
    description (no indexes) instead of their own."""
    found = []
    for value in vars(_models).values():
        if (
            isinstance(value, type)
            and issubclass(value, Model)
            and value.__module__ == _models.__name__
            and not value.__subclasses__()
        ):
            found.append(value)
    return found


def open_connections() -> None:
    """Create each model's connection and client now, in the calling thread."""
    for model in _models_with_tables():
        _ = model._get_connection().connection.client
