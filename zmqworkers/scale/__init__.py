"""Resource managers that start worker daemons on demand: Slurm first.

``policy`` decides (pure: a backlog, the jobs and a clock in, a decision
out), ``slurm_commands`` runs sbatch/squeue/sacct/scancel with timeouts,
``slurm_jobs`` ties them to a face (``Cluster``, ``WorkerController``)
through its commands only. The public import is :mod:`zmqworkers.slurm`.
"""
