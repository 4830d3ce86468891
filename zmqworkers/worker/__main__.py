"""``python -m zmqworkers.worker ADDRESS``: same as ``zmqworkers worker``."""

import os
import sys

from zmqworkers.cli import main
from zmqworkers.worker.mp_authkey import adopt_controller_authkey

if __name__ == "__main__":
    # Apps that build a Qt application (pydidas's do, on import) would make
    # Qt abort the worker on a node without a display; a worker shows none.
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    adopt_controller_authkey()
    sys.exit(main(["worker", *sys.argv[1:]]))
