"""Logging in a worker process: every record names the worker and its host.

The library logs through ``logging`` only, one logger per module under
``zmqworkers``; handlers and formats are the application's business (the
entry points set them: ``cli/main.py`` and ``worker/args.py``). A worker
process is the one place where the library owns the whole process, so there
every record, the library's and the task code's alike, gets ``worker_id``
and ``worker_host`` attributes, and the handlers already set up print them::

    2026-11-24 20:41:07,113 WARNING zmqworkers.worker.loop 4242 [node7-4242-a1b2c3 on node7]: ...
"""

from __future__ import annotations

import logging
from typing import Any

WORKER_FORMAT = (
    "%(asctime)s %(levelname)s %(name)s %(process)d [%(worker_id)s on %(worker_host)s]: %(message)s"
)


class WorkerRecordFactory:
    """A log record factory that adds ``worker_id`` and ``worker_host`` to every record.

    A factory rather than a filter: records reach every handler with the
    attributes, including handlers task code adds later.
    """

    def __init__(self, worker_id: str, host: str, previous: Any) -> None:
        self.worker_id = worker_id
        self.host = host
        self.previous = previous

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = self.previous(*args, **kwargs)
        record.worker_id = self.worker_id
        record.worker_host = self.host
        return record


def tag_worker_records(worker_id: str, host: str, fmt: str = WORKER_FORMAT) -> None:
    """Name the worker and host in every record of this process, and in the root handlers' format.

    Called again (a daemon that renamed itself), the latest names win.
    """
    previous = logging.getLogRecordFactory()
    if isinstance(previous, WorkerRecordFactory):
        previous = previous.previous
    logging.setLogRecordFactory(WorkerRecordFactory(worker_id, host, previous))
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logging.Formatter(fmt))
