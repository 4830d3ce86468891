"""A controller that forwards task log records, on a namespace host.

``python remote_log_job.py BIND LOG``: waits for one worker daemon, runs a
task that logs a warning there, and writes its own log (the forwarded
record among it) to ``LOG``. The key comes from ``$ZMQWORKERS_KEY``.
"""

import logging
import os
import sys

from zmqworkers import Cluster


def warn(x: int) -> int:
    logging.getLogger("farjob").warning("task %d on %s is unsure", x, os.environ.get("ZW_HOST"))
    return x


bind, log_path = sys.argv[1:3]
logging.basicConfig(filename=log_path, level=logging.WARNING, format="%(name)s|%(message)s")
with Cluster(0, bind=bind, forward_logs="WARNING") as cluster:
    cluster.wait_for_workers(1, timeout=60)
    assert cluster.submit(warn, 5).result(timeout=60) == 5
    logging.getLogger("remote_log_job").warning("job done")
