"""The web dashboard (``pip install 'aqueue-redis[web]'``): ``dashboard(url)`` is an ASGI app to
serve with ``aqueue dash`` or mount in a Starlette or FastAPI application."""

from ._app import DashboardApp, dashboard

__all__ = ["DashboardApp", "dashboard"]
