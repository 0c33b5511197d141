"""An unmodified AWS Lambda handler in lam.py: deployed with --handler lam.handler."""


def handler(event: dict[str, str], context: object) -> dict[str, object]:
    return {"statusCode": 200, "body": "ok"}
