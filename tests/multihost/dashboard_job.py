"""A controller with a dashboard on its host's network address, until a file appears.

argv: bind address, dashboard address, file to write the dashboard's URL to,
file whose appearance ends the run.
"""

import os
import sys
import time

from zmqworkers import Cluster

bind, dashboard, url_file, stop_file = sys.argv[1:5]
with Cluster(0, bind=bind, dashboard=dashboard) as cluster:
    assert cluster.dashboard_url is not None
    with open(url_file + ".tmp", "w") as f:
        f.write(cluster.dashboard_url)
    os.replace(url_file + ".tmp", url_file)
    deadline = time.monotonic() + 60  # bounded even if the test never says stop
    while not os.path.exists(stop_file) and time.monotonic() < deadline:
        time.sleep(0.05)
