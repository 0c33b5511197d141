"""Functions for the privacy tests: subject state, logs, consent gating, redaction."""

from typing import Any

import cumulo


@cumulo.function(data_categories=["contact", "profile"])
def profile(event: dict[str, Any], ctx: cumulo.Context) -> dict[str, Any]:
    subject = ctx.subject
    canary = event["canary"]
    ctx.state.put("profile", {"canary": canary}, subject=subject)
    visits = ctx.state.incr("visits", subject=subject)
    ctx.log.info(f"saved {canary}", canary=canary)
    print(f"stdout {canary}")
    return {
        "subject": subject,
        "visits": visits,
        "profile": ctx.state.get("profile", subject=subject),
    }


@cumulo.function(requires_consent="marketing", data_categories=["contact"])
def newsletter(event: dict[str, Any], ctx: cumulo.Context) -> dict[str, Any]:
    return {"sent_to": ctx.subject, "consent": ctx.privacy.has_consent(ctx.subject, "marketing")}


@cumulo.function
def chatty(event: dict[str, Any], ctx: cumulo.Context) -> dict[str, Any]:
    ctx.log.info(event["line"], detail=event["line"])
    print(event["line"])
    return {"ok": True}
