# The seed document's example, copied as it stands: only the import of the
# controller is changed (and, in the restart example, the seed's timer helper
# is a local class). Kept out of lint and format so it stays a faithful copy.
# ruff: noqa
# fmt: off
import time
import zmqworkers
import numpy as np

from qtpy import QtTest


def test_func(task, slope, offset):
    return task* slope + offset


def run_worker_controller():
    worker_controller = zmqworkers.WorkerController()
    worker_controller.change_function(test_func, 2, 5)
    result_spy = QtTest.QSignalSpy(worker_controller.sig_results)

    worker_controller.add_tasks(np.arange(10))
    worker_controller.finalize_tasks()
    worker_controller.start()


    while True:
        print("Progress at ", worker_controller.progress)
        if worker_controller.progress >= 1:
            break
        time.sleep(0.5)

    results = sorted(result_spy)
    print(results)

    print("WorkerController is alive: ", worker_controller.is_alive())


if __name__ == "__main__":
    run_worker_controller()
