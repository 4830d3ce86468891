"""Worker daemons as Slurm jobs: ``SlurmJobs`` (see docs/slurm.md).

::

    with Cluster(0, bind="tcp://0.0.0.0:0", key_file=KEY,
                 connection_file="/shared/me/conn.json") as cluster:
        jobs = SlurmJobs(cluster, "/shared/me/conn.json", processes=4, walltime="02:00:00")
        jobs.adapt(minimum=0, maximum=10)
        results = list(cluster.map(f, items))
        jobs.close()
"""

from zmqworkers.scale.jobscript import JobOptions, job_script
from zmqworkers.scale.policy import AdaptPolicy
from zmqworkers.scale.slurm_commands import SlurmCommands
from zmqworkers.scale.slurm_jobs import SlurmJobs

__all__ = ["AdaptPolicy", "JobOptions", "SlurmCommands", "SlurmJobs", "job_script"]
