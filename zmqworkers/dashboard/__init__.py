"""A read-only web dashboard: a live page, JSON status and Prometheus metrics.

::

   browser, Prometheus ──HTTP GET──▶ dashboard thread (http.server)
                                          │ status(): one engine command,
                                          │ at most every STATUS_MAX_AGE s
                                          ▼
                                     engine thread ── snapshot (plain data)

The HTTP side runs on threads of its own and reads the engine only through
its ``status`` command, which returns a snapshot: no request does HTTP work
on the engine thread, and none can submit work or change state (every
method but GET and HEAD is refused). See docs/monitoring.md.
"""

from zmqworkers.dashboard.server import Dashboard, is_loopback

__all__ = ["Dashboard", "is_loopback"]
