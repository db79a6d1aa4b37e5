"""The ``aqueue`` command: ``main`` (worker, dev, metrics, dash), ``admin`` (stats,
workers, cron, queue, task) and ``supervisor`` (``--processes``)."""
