"""The consumer side: a ``Worker`` (``worker.py``) and the parts it is built of, one per
module, each handed the few collaborators it needs: claims, slots, the held tasks, the
runners, outcomes, the lease, reaper, janitor, forwarder, cancel listener, boot checks,
the cron scheduler, outage handling. See docs/architecture.md, "Module map"."""
