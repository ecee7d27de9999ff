"""The fake data layer cannot drift from the real one: same names, same parameters."""

from __future__ import annotations

import inspect

import pytest

from mailsync import dal
from tests.unit.fake_dal import NOT_IMPLEMENTED, NOT_REPLACED, FakeDal


@pytest.mark.parametrize("name", FakeDal.provided())
def test_each_fake_function_has_the_real_ones_parameters(name: str) -> None:
    # Given a function of the fake, When it is compared with the dal function of its name,
    assert name in dal.__all__, f"FakeDal.{name} is not part of mailsync.dal"
    real = inspect.signature(getattr(dal, name))
    fake = inspect.signature(getattr(FakeDal(), name))

    # Then names, kinds and defaults of the parameters agree.
    def shape(signature: inspect.Signature) -> list[tuple[str, object, object]]:
        return [(p.name, p.kind, p.default) for p in signature.parameters.values()]

    assert shape(fake) == shape(real)


def test_every_dal_name_is_faked_or_listed_as_not_implemented() -> None:
    # Given the names dal exports, When split into what the fake provides and what it leaves out,
    provided = set(FakeDal.provided())

    # Then nothing is forgotten or claimed twice (a new dal function must be faked or listed).
    assert provided.isdisjoint(NOT_IMPLEMENTED)
    assert provided | NOT_IMPLEMENTED | NOT_REPLACED == set(dal.__all__)
