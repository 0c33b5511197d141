"""The data subject of an HTTP request: the caller's JWT subject claim, else the
`X-Cumulo-Subject` header (validated; asserted by the API key holder, e.g. a backend acting
for its users). A header that names someone else than the token's subject is refused."""

from __future__ import annotations

from starlette.types import Scope

from cumulo.errors import Forbidden
from cumulo.privacy.subjects import SUBJECT_HEADER, check_subject
from cumulo.security.auth import PRINCIPAL


def subject_of(scope: Scope) -> str | None:
    claimed: str | None = getattr(scope.get(PRINCIPAL), "subject", None)
    for name, value in scope["headers"]:
        if name == SUBJECT_HEADER:
            header = check_subject(value.decode("latin-1"))
            if claimed is not None and header != claimed:
                raise Forbidden(
                    "X-Cumulo-Subject differs from the token's subject", code="subject_mismatch"
                )
            return header
    return claimed
