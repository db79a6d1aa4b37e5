"""The protocol layer: everything that talks to the server.

Connections and the hot path's wire (``endpoint``, ``urls``, ``wire``), call deadlines
(``deadline``), the ``Broker`` (the one seam to redis-py and the error mapping), the key
layout (``keys``), and the Lua scripts (``lua/``, shared pieces in ``lua/lib/``) with one
typed function per script that builds its call (``scripts``). Nothing here knows about
workers, clients or tasks beyond key names.
"""
