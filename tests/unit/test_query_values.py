"""Empty query values count as unset: they are dropped before handlers parse the query."""

from __future__ import annotations

import pytest

from api.query import drop_empty_values


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        (b"status=&limit=", b""),
        (b"status=&limit=5", b"limit=5"),
        (b"limit=5&cursor=", b"limit=5"),
        (b"status=queued&limit=10", b"status=queued&limit=10"),
        (b"flag&limit=3", b"limit=3"),
        (b"q=%20", b"q=%20"),
        (b"a=1&&b=2", b"a=1&b=2"),
    ],
)
def test_parameters_without_a_value_are_dropped(given, kept):
    assert drop_empty_values(given) == kept
