"""Unmodified AWS Lambda handlers (deployed with --handler): echo what Lambda gives them."""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)


def echo(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """An API Gateway proxy response whose body is the event it got."""
    import json

    return {
        "statusCode": 200,
        "headers": {"content-type": "application/json"},
        "body": json.dumps(event),
    }


def cookies(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Several Set-Cookie, multiValueHeaders and a binary body."""
    return {
        "statusCode": 201,
        "headers": {"x-single": "one"},
        "multiValueHeaders": {"x-multi": ["a", "b"]},
        "cookies": ["a=1; Path=/", "b=2; HttpOnly"],
        "body": "AAEC/w==",
        "isBase64Encoded": True,
    }


def context_fields(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The Lambda context object and environment, as a plain JSON result."""
    log.info("logged at info %s", context.aws_request_id)
    print("printed", context.aws_request_id)
    remaining = context.get_remaining_time_in_millis()
    return {
        "event": event,
        "function_name": context.function_name,
        "function_version": context.function_version,
        "invoked_function_arn": context.invoked_function_arn,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "aws_request_id": context.aws_request_id,
        "log_group_name": context.log_group_name,
        "log_stream_name": context.log_stream_name,
        "remaining_ok": 0 < remaining <= 30_000,
        "env": {
            k: v for k, v in os.environ.items() if k.startswith(("AWS_", "LAMBDA_", "_HANDLER"))
        },
    }


def fail(event: dict[str, Any], context: Any) -> dict[str, Any]:
    raise ValueError(f"no good: {event.get('why', 'because')}")


def cumulo_style(event: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """Undecorated but cumulo's `(event, ctx)`: keeps the JSON body by default."""
    return event
