"""``python -m zmqworkers.worker ADDRESS``: ``zmqworkers worker`` without the rest of the CLI."""

import os
import sys

from zmqworkers.worker.args import main
from zmqworkers.worker.mp_authkey import adopt_controller_authkey

if __name__ == "__main__":
    # Apps that build a Qt application (pydidas's do, on import) would make
    # Qt abort the worker on a node without a display; a worker shows none.
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    adopt_controller_authkey()
    sys.exit(main(sys.argv[1:]))
