"""An unmodified AWS Lambda handler behind API Gateway (HTTP API, payload 2.0); deploy with:

cumulo deploy examples/lambda_handler.py --name orders --handler lambda_handler.handler

then `curl -d '{"items": [{"price": 3, "qty": 2}]}' …/fn/default/orders` (with a key).
"""

import json


def handler(event, context):
    order = json.loads(event.get("body") or "{}")
    total = sum(item.get("price", 0) * item.get("qty", 1) for item in order.get("items", []))
    return {
        "statusCode": 200,
        "headers": {"content-type": "application/json"},
        "body": json.dumps({"total": total, "request_id": context.aws_request_id}),
    }
