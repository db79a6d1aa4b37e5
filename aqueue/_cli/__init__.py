"""The ``aqueue`` command: ``main`` (the parser, worker, dev, metrics, dash), ``admin``
(stats, workers, cron, queue, task), ``output`` (how the admin commands print), ``args``
(argument types) and ``supervisor`` (``--processes``)."""
