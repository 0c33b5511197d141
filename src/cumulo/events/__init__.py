"""Async invocations (a durable queue with retries and dead letters) and cron schedules."""

from cumulo.events.dispatcher import InvokeFn
from cumulo.events.service import EventsService

__all__ = ["EventsService", "InvokeFn"]
