"""The consumer side: a ``Worker`` and the parts it is built of (claims, outcomes,
leases and the background loops, the cron scheduler, outage handling)."""
