"""``zmqworkers run MODULE:FUNC``: a function over tasks, with progress and a summary."""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from zmqworkers.errors import ConfigurationError

log = logging.getLogger(__name__)

# Without a terminal, a progress line goes to the log this often (seconds).
LOG_EVERY = 5.0
# The bar's width on a terminal that reports no size (``script``, some CI
# and editor terminals): tqdm would draw it zero characters wide.
FALLBACK_COLUMNS = 80
FALLBACK_ROWS = 24


def load_function(ref: str) -> Callable[..., Any]:
    """``package.module:function`` -> the function (the current folder importable)."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(f"expected MODULE:FUNC, got {ref!r}")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigurationError(f"{module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise ConfigurationError(f"{ref} is not callable")
    # Worker daemons on other machines need not have the user's module:
    # it travels by value with the function.
    import cloudpickle

    module = sys.modules[module_name]
    if not module_name.startswith("zmqworkers") and module.__name__ != "__main__":
        try:
            cloudpickle.register_pickle_by_value(module)
        except ValueError:
            pass  # a built-in or extension module: importable everywhere anyway
    return obj  # type: ignore[no-any-return]


def parse_range(text: str) -> range:
    """``A:B`` or ``A:B:STEP`` -> range."""
    try:
        parts = [int(p) for p in text.split(":")]
        if len(parts) not in (2, 3):
            raise ValueError
        return range(*parts)
    except ValueError:
        raise ConfigurationError(f"--range takes A:B or A:B:STEP, got {text!r}") from None


def read_tasks(path: str) -> list[Any]:
    """Tasks from a file: JSON lines (.jsonl), a JSON list (.json) or numpy (.npy)."""
    p = Path(path)
    try:
        if p.suffix == ".npy":
            import numpy as np

            return list(np.load(p, allow_pickle=False))
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read tasks from {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigurationError(f"{path} is not a numpy .npy file: {exc}") from exc
    if p.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(data, list):
            raise ConfigurationError(f"{path} must hold a JSON list of tasks")
        return data
    tasks = []
    for no, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                tasks.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ConfigurationError(f"{path} line {no} is not JSON: {exc}") from exc
    return tasks


@dataclass
class RunSummary:
    total: int
    done: int = 0
    failed: list[tuple[Any, BaseException]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    def progress_line(self) -> str:
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = (self.total - self.done) / self.rate if self.rate > 0 else math.inf
        eta_s = "?" if math.isinf(eta) else f"{eta:.0f} s"
        return (
            f"progress {self.done}/{self.total} ({pct:.1f} %), {self.rate:.1f} tasks/s, "
            f"eta {eta_s}, failures {len(self.failed)}"
        )


class ResultWriter:
    """Writes results as they arrive (.jsonl) or at the end (.npz)."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self._out: IO[str] | None = None
        self._npz_file: IO[bytes] | None = None
        self._npz: list[tuple[Any, Any]] = []
        if self.path is not None:
            if self.path.suffix not in (".jsonl", ".npz"):
                raise ConfigurationError(f"--output must end in .jsonl or .npz, got {path}")
            # Opened now, .npz too: a folder that is missing or not writable
            # must stop the job before it runs, not lose its results after.
            try:
                if self.path.suffix == ".jsonl":
                    self._out = self.path.open("w", encoding="utf-8")
                else:
                    self._npz_file = self.path.open("wb")
            except OSError as exc:
                raise ConfigurationError(f"cannot write --output {path}: {exc.strerror}") from None

    def write(self, task: Any, result: Any, error: BaseException | None) -> None:
        if self._out is not None:
            row = {"task": _jsonable(task)}
            if error is None:
                row["result"] = _jsonable(result)
            else:
                row["error"] = describe_error(error)
            self._out.write(json.dumps(row) + "\n")
            self._out.flush()
        elif self.path is not None and error is None:
            self._npz.append((task, result))

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
        elif self._npz_file is not None:
            import numpy as np

            try:
                self._npz.sort(key=lambda tr: tr[0])
            except TypeError:
                pass  # tasks without an order stay in arrival order
            with self._npz_file:
                np.savez(
                    self._npz_file,
                    tasks=_stack([t for t, _ in self._npz]),
                    results=_stack([r for _, r in self._npz]),
                )


def _stack(values: list[Any]) -> Any:
    """One array of the values; of dtype object when their shapes differ."""
    import numpy as np

    try:
        return np.asarray(values)
    except ValueError:
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out


def describe_error(err: BaseException) -> str:
    """``ValueError: message`` for a remote error, as it was raised remotely."""
    name = getattr(err, "type_name", type(err).__name__)
    return f"{name}: {getattr(err, 'remote_message', err)}"


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        if hasattr(value, "tolist"):
            return value.tolist()
        return repr(value)


def run(
    func_ref: str,
    tasks: Iterable[Any],
    total: int,
    *,
    args: list[Any],
    kwargs: dict[str, Any],
    n_workers: int,
    bind: str | None,
    key_file: str | None,
    output: str | None,
    progress: bool,
    dashboard: str | None = None,
    forward_logs: str | None = None,
) -> int:
    """Run the job; return the exit status (1 when any task failed)."""
    from zmqworkers.client.cluster import Cluster

    func = load_function(func_ref)
    writer = ResultWriter(output)
    summary = RunSummary(total=total)
    cluster_kw: dict[str, Any] = {
        "key_file": key_file,
        "dashboard": dashboard,
        "forward_logs": forward_logs,
    }
    if bind:
        cluster_kw["bind"] = bind
    last_log = time.monotonic()
    bar = None
    try:
        with contextlib.ExitStack() as stack:
            if progress:
                bar = stack.enter_context(_make_bar(total))
                # Log lines go above the bar (through tqdm.write), never into it.
                from tqdm.contrib.logging import logging_redirect_tqdm

                stack.enter_context(logging_redirect_tqdm())
            cluster = stack.enter_context(Cluster(n_workers, **cluster_kw))
            if bind:
                log.info("controller listening at %s", cluster.address)
            log.info("running %s over %d tasks", func_ref, total)
            for outcome in cluster.imap_outcomes(func, tasks, *args, **kwargs):
                summary.done += 1
                if outcome.error is not None:
                    summary.failed.append((outcome.task, outcome.error))
                writer.write(outcome.task, outcome.result, outcome.error)
                if bar is not None:
                    bar.update(1)
                    if outcome.error is not None:
                        bar.set_postfix(failures=len(summary.failed), refresh=False)
                elif time.monotonic() - last_log >= LOG_EVERY:
                    log.info(summary.progress_line())
                    last_log = time.monotonic()
    finally:
        if bar is None:
            log.info(summary.progress_line())
        writer.close()
    _print_summary(summary)
    return 1 if summary.failed else 0


def terminal_columns(stream: IO[str]) -> int:
    """The terminal's width, or 0 when it reports none (or is no terminal)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 0


def _make_bar(total: int) -> Any:
    from tqdm import tqdm

    # tqdm reads the size once and then at each redraw (dynamic_ncols). A
    # terminal that says 0 x 0 would get a bar 0 wide that tqdm never draws
    # (it takes 0 rows as no room): a fixed size instead.
    width: dict[str, Any] = (
        {"dynamic_ncols": True}
        if terminal_columns(sys.stderr)
        else {"ncols": FALLBACK_COLUMNS, "nrows": FALLBACK_ROWS}
    )
    return tqdm(total=total, unit="task", file=sys.stderr, smoothing=0.1, **width)


def _print_summary(summary: RunSummary) -> None:
    ok = summary.done - len(summary.failed)
    print(
        f"{summary.done} of {summary.total} tasks done in {summary.elapsed:.2f} s "
        f"({summary.rate:.1f} tasks/s): {ok} succeeded, {len(summary.failed)} failed",
        file=sys.stderr,
    )
    for task, err in summary.failed[:20]:
        print(f"  task {task!r} failed: {describe_error(err)}", file=sys.stderr)
    if len(summary.failed) > 20:
        print(f"  ... and {len(summary.failed) - 20} more", file=sys.stderr)
