"""The protocol layer: everything that talks to the server.

Connections and the hot path's wire (``endpoint``, ``wire``), call deadlines
(``deadline``), the ``Broker`` (the one seam to redis-py and the error mapping), the key
layout (``keys``) and the Lua scripts (``lua/``). Nothing here knows about workers,
clients or tasks beyond key names.
"""
