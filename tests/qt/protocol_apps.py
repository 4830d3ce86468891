"""Apps of pydidas's app protocol without pydidas: what ``AppRunner`` must run like it.

``ProtocolApp`` has the shape of a ``pydidas.core.BaseApp`` subclass: a QObject
built as ``cls(params, clone_mode=...)`` from a parameter object with
``copy()``, a ``_config`` dict with ``run_prepared``, an ``mp_manager``, and
store and post-run slots. Clones (the workers' apps and the runner's copy)
hold no composite; the app handed to the runner gets every result.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from qtpy import QtCore


class Params(dict):  # type: ignore[type-arg]
    """Stands in for pydidas's ParameterCollection: the constructor takes it whole."""

    def copy(self) -> Params:
        return Params(self)


class ProtocolApp(QtCore.QObject):
    attributes_not_to_copy_to_app_clone = ["composite"]

    def __init__(self, params: Params | None = None, clone_mode: bool = False) -> None:
        super().__init__()
        self.params = Params(n_frames=8, gain=2.0, delay=0.0) if params is None else params
        self.clone_mode = clone_mode
        self._config: dict[str, Any] = {"run_prepared": False, "offset": 1.0}
        self.mp_manager: dict[str, Any] = {}
        self.composite: np.ndarray | None = None
        self.pre_runs = 0
        self.post_runs = 0
        self.stored: list[Any] = []

    def copy(self, clone_mode: bool = False) -> ProtocolApp:
        new = type(self)(self.params.copy(), clone_mode=clone_mode)
        new._config = dict(self._config)
        new.mp_manager = dict(self.mp_manager)
        new.pre_runs, new.post_runs, new.stored = self.pre_runs, self.post_runs, list(self.stored)
        if not clone_mode and self.composite is not None:
            new.composite = self.composite.copy()
        return new

    def get_config(self) -> dict[str, Any]:
        return dict(self._config)

    def get_latest_results(self) -> Any:
        return self._config.get("latest_results")

    def multiprocessing_pre_run(self) -> None:
        self.pre_runs += 1
        self._config["mp_tasks"] = list(range(self.params["n_frames"]))
        if not self.clone_mode:
            self.composite = np.zeros(self.params["n_frames"])
        self._config["run_prepared"] = True

    def multiprocessing_get_tasks(self) -> list[int]:
        return list(self._config["mp_tasks"])

    def multiprocessing_pre_cycle(self, index: int) -> None:
        self._config["current"] = index

    def multiprocessing_carryon(self) -> bool:
        return True

    def multiprocessing_func(self, index: int) -> float | None:
        if not self.clone_mode or self._config["current"] != index:
            raise RuntimeError("a worker's app must be a clone that ran pre_cycle first")
        time.sleep(self.params["delay"])
        value = index * self.params["gain"] + self._config["offset"]
        if index % 2:
            # Odd frames answer through the config, as pydidas's apps may
            # after a signal: the worker then asks get_latest_results().
            self._config["latest_results"] = value
            return None
        return value

    def must_send_signal_and_wait_for_response(self) -> str | None:
        index = self._config["current"]
        return f"frame {index} signals" if index % 2 else None

    def signal_processed_and_can_continue(self) -> bool:
        return True

    @QtCore.Slot(object, object)
    def multiprocessing_store_results(self, index: int, value: float) -> None:
        self.stored.append(index)
        if self.clone_mode:
            return
        assert self.composite is not None
        self.composite[index] = value

    @QtCore.Slot()
    def multiprocessing_post_run(self) -> None:
        self.post_runs += 1


def expected_composite(n_frames: int = 8, gain: float = 2.0, offset: float = 1.0) -> np.ndarray:
    return np.arange(n_frames) * gain + offset
