"""Every option default is written once: the faces' signatures follow EngineOptions."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest

from zmqworkers.controller.options import FACE_ONLY, EngineOptions, build_options

# Options a face spells differently: its default stands for "work it out".
RESOLVED_BY_FACE = {
    "n_workers": None,  # one per core
    "key": None,  # key_file, $ZMQWORKERS_KEY or a random key
    "curve_dir": None,
    "connection_file": None,
}
# Engine settings no face takes (tuning, or worked out from other options).
ENGINE_ONLY = {
    "key_given",
    "batch_target",
    "max_batch",
    "batch_bytes",
    "process_check_interval",
    "worker_env",
    "local_ipc",
}
# What only one face has, and why.
ONLY_WORKER_CONTROLLER = {"function", "func_args", "func_kwargs"}  # the seed's API
ONLY_CLUSTER: set[str] = set()


def _params(cls: type) -> dict[str, inspect.Parameter]:
    params = dict(inspect.signature(cls.__init__).parameters)
    params.pop("self")
    return params


def _faces() -> list[type]:
    from zmqworkers.client.cluster import Cluster
    from zmqworkers.qt.controller import WorkerController

    return [Cluster, WorkerController]


def test_faces_take_the_same_options_with_the_same_defaults() -> None:
    fields = {f.name: f for f in dataclasses.fields(EngineOptions)}
    cluster, controller = (_params(face) for face in _faces())
    assert set(cluster) - set(controller) == ONLY_CLUSTER
    assert set(controller) - set(cluster) == ONLY_WORKER_CONTROLLER
    for face in _faces():
        params = _params(face)
        extra = set(params) - set(fields) - FACE_ONLY - ONLY_WORKER_CONTROLLER
        assert not extra, f"{face.__name__} takes {extra}, which EngineOptions lacks"
        missing = set(fields) - set(params) - ENGINE_ONLY
        assert not missing, f"{face.__name__} lacks {missing}"
        for name, param in params.items():
            if name not in fields:
                continue
            want: Any = RESOLVED_BY_FACE.get(name, fields[name].default)
            assert param.default == want, f"{face.__name__}({name}=) defaults to {param.default!r}"


def test_options_are_frozen_and_not_shared() -> None:
    env = {"A": "1"}
    options = EngineOptions(worker_env=env)
    env["A"] = "2"
    assert options.worker_env["A"] == "1"
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.n_workers = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        options.worker_env["B"] = "x"  # type: ignore[index]
    assert options.replace(n_workers=3).n_workers == 3
    assert options.n_workers == 0


def test_engine_leaves_its_options_alone(tmp_path: Any) -> None:
    from zmqworkers.controller.engine import Engine
    from zmqworkers.security import curve

    curve.create(tmp_path)
    options = build_options(curve_dir=tmp_path, n_workers=0)
    before = _values(options)
    engine = Engine(options, _NoHandler())
    assert _values(options) == before
    assert engine.options.worker_env[curve.CURVE_ENV] == str(tmp_path)
    assert curve.CURVE_ENV not in options.worker_env


def test_unknown_options_are_named() -> None:
    from zmqworkers.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="heartbeat_intervall"):
        build_options(heartbeat_intervall=2.0)


def _values(options: EngineOptions) -> dict[str, Any]:
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}


class _NoHandler:
    def on_results(self, results: Any) -> None:
        raise AssertionError("no results expected")

    def on_event(self, name: str, data: Any) -> None:
        raise AssertionError("no events expected")


@pytest.mark.parametrize("bad", [-1, 0, 10, 65535, True, 1.5e9, "4096"])
def test_a_message_size_limit_below_the_floor_is_refused(bad: Any) -> None:
    # Accepted before, these made every message too large: every job hung.
    from zmqworkers import Cluster
    from zmqworkers.protocol.messages import MIN_MESSAGE_SIZE
    from zmqworkers.worker.options import WorkerOptions

    for make in (
        lambda: build_options(max_message_size=bad),
        lambda: Cluster(1, max_message_size=bad),
        lambda: WorkerOptions(max_message_size=bad),
    ):
        with pytest.raises(ValueError, match="max_message_size") as info:
            make()
        assert repr(bad) in str(info.value)
        assert str(MIN_MESSAGE_SIZE) in str(info.value)


def test_the_floor_itself_is_accepted() -> None:
    from zmqworkers.protocol.messages import MIN_MESSAGE_SIZE

    assert build_options(max_message_size=MIN_MESSAGE_SIZE).max_message_size == MIN_MESSAGE_SIZE
