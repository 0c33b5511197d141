"""An unmodified AWS Lambda handler; deploy with:

cumulo deploy examples/lambda_handler.py --name orders --handler lambda_handler.handler
"""

import json


def handler(event, context):
    total = sum(item.get("price", 0) * item.get("qty", 1) for item in event.get("items", []))
    return {
        "statusCode": 200,
        "headers": {"content-type": "application/json"},
        "body": json.dumps({"total": total, "request_id": context.aws_request_id}),
    }
