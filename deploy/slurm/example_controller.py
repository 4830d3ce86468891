"""A controller script for zmqworkers.sbatch: squares numbers on the job's daemons.

    sbatch --ntasks=3 deploy/slurm/zmqworkers.sbatch deploy/slurm/example_controller.py 1000
"""

import os
import sys

from zmqworkers import Cluster


def square(x: int) -> int:
    return x * x


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    with Cluster(
        0,  # no local workers: the job's daemons do the work
        bind=os.environ["ZMQWORKERS_BIND"],
        key_file=os.environ["ZMQWORKERS_KEY_FILE"],
        connection_file=os.environ["ZMQWORKERS_CONNECTION_FILE"],
    ) as cluster:
        cluster.wait_for_workers(int(os.environ["ZMQWORKERS_WORKERS"]), timeout=300)
        results = list(cluster.map(square, range(n)))
        workers = cluster.workers()
    hosts = sorted({w["host"] for w in workers})
    print(f"workers={len(workers)} hosts={','.join(hosts)}")
    print(f"sum={sum(results)} n={len(results)} ok={results == [x * x for x in range(n)]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
