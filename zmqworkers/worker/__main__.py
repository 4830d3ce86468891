"""``python -m zmqworkers.worker ADDRESS``: same as ``zmqworkers worker``."""

import sys

from zmqworkers.cli import main

if __name__ == "__main__":
    sys.exit(main(["worker", *sys.argv[1:]]))
