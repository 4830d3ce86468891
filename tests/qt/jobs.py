"""Functions and apps the Qt tests run on workers; no Qt here, workers import it."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from zmqworkers.client.apps import BaseApp, send_message


def linear(task: Any, slope: Any, offset: Any = 0) -> Any:
    return task * slope + offset


def fail_on(task: int, bad: int) -> int:
    if task == bad:
        raise ValueError(f"task {task} is bad")
    return task


def row_sum(row: np.ndarray, weights: np.ndarray) -> float:
    return float(np.dot(row, weights))


def talk(task: int) -> int:
    send_message(f"hello from task {task}")
    return task


def talk_and_log(task: int) -> int:
    import logging

    logging.getLogger("qtjob").warning("task %d logs a warning", task)
    return talk(task)


def frame_image(index: int, shape: tuple[int, int], gain: float, offset: float) -> np.ndarray:
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    return gain * np.sin(x * (index + 1) / 7.0) * np.cos(y / (index + 2.0)) + offset + index


class CompositeApp(BaseApp):
    """Tasks are frame indices; each frame is an image, stored into one composite."""

    default_params = {"n_frames": 12, "frame_shape": (24, 32), "columns": 4, "gain": 1.0}

    def multiprocessing_pre_run(self) -> None:
        if self.clone_mode:
            return  # workers compute frames; only the controller holds the composite
        n, cols = self.get_param_value("n_frames"), self.get_param_value("columns")
        h, w = self.get_param_value("frame_shape")
        rows = -(-n // cols)
        self.composite = np.zeros((rows * h, cols * w))
        # Config computed on the controller that the workers need too.
        self._config["offset"] = 0.25 * n
        self.post_run_calls = 0

    def multiprocessing_get_tasks(self) -> range:
        return range(self.get_param_value("n_frames"))

    def multiprocessing_func(self, index: int) -> np.ndarray:
        return frame_image(
            index,
            self.get_param_value("frame_shape"),
            self.get_param_value("gain"),
            self._config["offset"],
        )

    def multiprocessing_store_results(self, index: int, image: np.ndarray) -> None:
        h, w = self.get_param_value("frame_shape")
        r, c = divmod(index, self.get_param_value("columns"))
        self.composite[r * h : (r + 1) * h, c * w : (c + 1) * w] = image

    def multiprocessing_post_run(self) -> None:
        self.post_run_calls += 1


class SignallingApp(CompositeApp):
    """Sends a text after each frame and waits for the go-ahead (here: at once)."""

    def multiprocessing_func(self, index: int) -> np.ndarray:
        self._last = index
        return super().multiprocessing_func(index)

    def must_send_signal_and_wait_for_response(self) -> str | None:
        return f"frame {self._last} done"


class FailingApp(CompositeApp):
    def multiprocessing_func(self, index: int) -> np.ndarray:
        if index == 5:
            raise ValueError("frame 5 cannot be read")
        return super().multiprocessing_func(index)


class CountdownApp(BaseApp):
    """Without tasks: each worker produces ``per_worker`` results, then idles."""

    default_params = {"per_worker": 3}

    def multiprocessing_pre_run(self) -> None:
        self.left = self.get_param_value("per_worker")
        self.stored: list[tuple[Any, Any]] = []

    def multiprocessing_carryon(self) -> bool:
        return self.left > 0

    def multiprocessing_func(self, index: int) -> tuple[str, int]:
        self.left -= 1
        return (f"{os.getpid()}-{self.left}", index)

    def multiprocessing_store_results(self, index: Any, result: Any) -> None:
        self.stored.append((index, result))


def die_on(task: int, bad: int) -> int:
    if task == bad:
        os._exit(3)  # the worker process dies mid-task, as a crash in compiled code would
    return task


class UnpreparedApp(CompositeApp):
    def multiprocessing_pre_run(self) -> None:
        raise FileNotFoundError("no such detector file")
