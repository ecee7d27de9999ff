"""The data layer reads its table names from the settings whenever it talks to DynamoDB."""

from __future__ import annotations

import pytest

from mailsync.config import get_settings
from mailsync.dal import _models


def test_models_follow_the_settings_without_binding(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given settings that name other tables
    monkeypatch.setenv("ACCOUNTS_TABLE", "accounts-a")
    monkeypatch.setenv("MESSAGES_TABLE", "messages-a")
    get_settings.cache_clear()
    assert (_models.AccountModel.Meta.table_name, _models.TenantSettingsModel.Meta.table_name) == ("accounts-a",) * 2
    assert {m.Meta.table_name for m in (_models.MessageModel, _models.OpModel, _models.ThreadModel)} == {"messages-a"}
    # When the environment changes and the settings are read again, the models follow
    monkeypatch.setenv("MESSAGES_TABLE", "messages-b")
    get_settings.cache_clear()
    assert _models.LocationModel.Meta.table_name == "messages-b"
    monkeypatch.undo()
    get_settings.cache_clear()
