"""Peers the platform is measured against, doing the same work as bench/functions/echo.py."""
