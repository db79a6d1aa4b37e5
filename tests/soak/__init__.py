"""The randomized fault soak (issue 18): many faults at once, at random, over minutes.

``python -m tests.soak`` (``make soak``) runs worker processes under a seeded fault
schedule while producers enqueue every kind of work, then an oracle judges the end
state; ``tests/soak/test_soak.py`` runs a short seeded form inside ``make test``.

Modules, by role:

* ``app``      the worker processes' Mux; handlers record what they do on a separate server
* ``record``   the records' format, shared by the handlers and the oracle
* ``faultnet`` a TCP proxy per worker slot that cuts, stalls or delays its traffic
* ``servers``  the server under test (restartable, AOF) and the record server
* ``fleet``    the worker slots: start, signal, restart
* ``plan``     the fault schedule drawn from the seed
* ``produce``  the producers, and what they recorded as enqueued
* ``oracle``   the end-state checks
* ``run``      one soak: all of the above, in order
"""
