"""An AWS Lambda Powertools service as AWS users write it, deployed with --handler."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, APIGatewayRestResolver
from aws_lambda_powertools.utilities.parser import BaseModel, event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext

logger = Logger(service="orders")
tracer = Tracer(disabled=True)
http_app = APIGatewayHttpResolver()
rest_app = APIGatewayRestResolver()


@http_app.get("/orders/<order_id>")
@tracer.capture_method
def get_order(order_id: str) -> dict[str, Any]:
    logger.info("fetching order", extra={"order_id": order_id})
    query = http_app.current_event.query_string_parameters or {}
    return {"order": order_id, "via": "http", "verbose": query.get("verbose")}


@http_app.post("/orders")
def create_order() -> tuple[dict[str, Any], int]:
    body = http_app.current_event.json_body
    return {"created": body["item"], "cookies": http_app.current_event.cookies}, 201


@rest_app.get("/orders/<order_id>")
def get_rest_order(order_id: str) -> dict[str, Any]:
    return {"order": order_id, "via": "rest", "method": rest_app.current_event.http_method}


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def http_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return http_app.resolve(event, context)


@logger.inject_lambda_context
def rest_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return rest_app.resolve(event, context)


class Order(BaseModel):
    item: str
    quantity: int


@event_parser(model=Order)
def parsed_handler(event: Order, context: LambdaContext) -> dict[str, Any]:
    return {"item": event.item, "total": event.quantity * 2}
