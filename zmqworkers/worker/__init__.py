"""The worker program. Importing this package never loads Qt."""

from zmqworkers.worker.loop import Worker, WorkerOptions

__all__ = ["Worker", "WorkerOptions"]
