"""A raw HTTP handler: checks a shared secret header and answers with any status.

It answers 401 until the secret exists: `cumulo secrets set WEBHOOK_TOKEN` (asks for the
value without echoing it), then call it with the header `x-webhook-token: <that value>`.
"""

import hmac

import cumulo


@cumulo.function(secrets=["WEBHOOK_TOKEN"])
def webhook(request: cumulo.Request, ctx: cumulo.Context) -> cumulo.Response:
    token = ctx.secrets.get("WEBHOOK_TOKEN", "")
    given = request.headers.get("x-webhook-token", "")
    if not token or not hmac.compare_digest(given, token):
        return cumulo.Response({"accepted": False}, status=401)
    ctx.log.info("webhook received", path=request.path, size=len(request.body))
    return cumulo.Response({"accepted": True, "path": request.path}, status=202)
