"""``python -m zmqworkers.worker ADDRESS``: same as ``zmqworkers worker``."""

import sys

from zmqworkers.cli import main
from zmqworkers.worker.mp_authkey import adopt_controller_authkey

if __name__ == "__main__":
    adopt_controller_authkey()
    sys.exit(main(["worker", *sys.argv[1:]]))
