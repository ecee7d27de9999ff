"""Fixtures of the unit tier: the in-memory data layer (``fake_dal``)."""

from tests.unit.fake_dal import fake_dal

__all__ = ["fake_dal"]
