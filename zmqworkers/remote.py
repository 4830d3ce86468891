"""Task log records from workers, re-emitted on the ``zmqworkers.remote`` logger.

Each arrives as a MESSAGE with a ``log`` map (see ``worker/logforward.py``)
and becomes a record of this process's ``zmqworkers.remote`` logger, its
message prefixed with the worker's id and host, and carrying ``worker``,
``worker_host``, ``remote_logger`` and ``remote_created`` for handlers that
want them. The count of records a worker dropped over its rate is said
here, as a warning of the same logger.
"""

from __future__ import annotations

import logging
from typing import Any

from zmqworkers.controller.scheduler import WorkerState
from zmqworkers.protocol.records import ForwardedLog

# Named after this module: the logger the task records of every worker go to.
REMOTE = logging.getLogger(__name__)


def forwarded(worker: WorkerState, header: Any) -> bool:
    """Log the forwarded record a MESSAGE carries; False if it carries none."""
    if not (isinstance(header, dict) and "log" in header):
        return False
    rec = ForwardedLog.parse(header["log"], worker.id)
    extra = {
        "worker": worker.id,
        "worker_host": worker.host,
        "remote_logger": rec.logger,
        "remote_created": rec.created,
    }
    if rec.dropped:
        REMOTE.warning(
            "worker %s (%s): %d task log record(s) dropped, over its limit a second",
            worker.id,
            worker.host,
            rec.dropped,
            extra={**extra, "dropped": rec.dropped},
        )
    if rec.level > 0 and REMOTE.isEnabledFor(rec.level):
        REMOTE.log(
            rec.level,
            "worker %s (%s) %s: %s",
            worker.id,
            worker.host,
            rec.logger,
            rec.message,
            extra=extra,
        )
    return True
