"""StoreUnavailable: the one error a store backend raises when its database is out of reach."""

from __future__ import annotations

from cumulo.errors import StoreUnavailable, Unavailable, api_error_for


def test_store_unavailable_is_a_503_with_its_own_code() -> None:
    exc = StoreUnavailable("the database is unavailable: connection refused")
    assert isinstance(exc, Unavailable)
    assert (exc.status, exc.code) == (503, "store_unavailable")
    assert exc.to_dict() == {
        "error": {
            "code": "store_unavailable",
            "message": "the database is unavailable: connection refused",
        }
    }


def test_a_client_tells_store_unavailable_from_other_503s() -> None:
    assert isinstance(api_error_for(503, "store_unavailable", "down"), StoreUnavailable)
    other = api_error_for(503, "unavailable", "busy")
    assert isinstance(other, Unavailable)
    assert not isinstance(other, StoreUnavailable)
