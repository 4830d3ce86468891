"""The worker side of a pydidas workflow: one scan point in, its node results out.

A worker gets a :class:`WorkflowState` (plain strings and dicts: the tree,
the scan, the diffraction experiment and the plugin folders the controller
had registered) and rebuilds pydidas's context from it once; each task is
then one scan point, run through the tree. What goes back is the data of
every node with results, as float32 arrays, so nothing depends on memory
shared with the controller: the same code serves local workers and daemons
on other hosts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np

# A scan point whose input file could not be read: pydidas reports it and
# skips the point, and so does the controller when it gets this.
UNREADABLE = None


@dataclasses.dataclass(frozen=True)
class WorkflowState:
    """What a worker needs to run the controller's workflow."""

    tree: str
    scan: dict[str, Any]
    exp: dict[str, Any]
    plugin_paths: tuple[str, ...] = ()
    # Names one run; a worker that stays for the next (a daemon) sends the
    # frame metadata again at the first point of each.
    run: str = ""

    @property
    def token(self) -> str:
        """Changes whenever any part of the state does, so workers rebuild."""
        text = repr((self.tree, sorted(self.scan.items()), sorted(self.exp.items())))
        text += repr(self.plugin_paths)
        return hashlib.sha256(text.encode()).hexdigest()[:24]


def capture_state(run: str = "") -> WorkflowState:
    """The state of pydidas's workflow, scan and experiment in this process."""
    from pydidas.contexts import DiffractionExperimentContext, ScanContext
    from pydidas.plugins import PluginCollection
    from pydidas.workflow import WorkflowTree

    return WorkflowState(
        tree=WorkflowTree().export_to_string(),
        scan=ScanContext().get_param_values_as_dict(filter_types_for_export=True),
        exp=DiffractionExperimentContext().get_param_values_as_dict(filter_types_for_export=True),
        plugin_paths=tuple(str(p) for p in PluginCollection().registered_paths),
        run=run,
    )


class _Prepared:
    token: str | None = None
    run: str | None = None
    # Whether this worker has sent the frame metadata since it was prepared:
    # the controller needs it once, from whichever result arrives first.
    metadata_sent = False


def _prepare(state: WorkflowState) -> None:
    from pydidas.contexts import DiffractionExperimentContext, ScanContext
    from pydidas.plugins import PluginCollection
    from pydidas.workflow import WorkflowTree

    collection = PluginCollection()
    known = {str(p) for p in collection.registered_paths}
    for path in state.plugin_paths:
        if path not in known and Path(path).is_dir():
            collection.find_and_register_plugins(Path(path))
    scan, exp = ScanContext(), DiffractionExperimentContext()
    for name, value in state.scan.items():
        scan.set_param_value(name, value)
    for name, value in state.exp.items():
        exp.set_param_value(name, value)
    tree = WorkflowTree()
    tree.restore_from_string(state.tree)
    tree.prepare_execution()
    _Prepared.token = state.token
    _Prepared.metadata_sent = False


def frame_metadata(results: dict[int, Any]) -> dict[int, dict[str, Any]]:
    """Axis labels, units, ranges and data label of each node's result, as pydidas keeps them."""
    from pydidas.core import Dataset
    from pydidas.core.utils.dataset_utils import get_default_property_dict

    meta: dict[int, dict[str, Any]] = {}
    for node_id, res in results.items():
        if isinstance(res, Dataset):
            props = dict(res.property_dict)
            props.pop("metadata", None)
        else:
            props = get_default_property_dict(np.shape(res))
        meta[node_id] = props
    return meta


def process_point(
    index: int, state: WorkflowState
) -> tuple[dict[int, np.ndarray], dict[int, dict[str, Any]] | None] | None:
    """Run scan point ``index`` through the workflow in ``state``.

    Returns ``(arrays, metadata)``: float32 copies of every node's result
    (what pydidas's shared buffers hold) and, on this worker's first point,
    the frame metadata; ``None`` if the point's input could not be read.
    """
    from pydidas.core import FileReadError
    from pydidas.workflow import WorkflowTree

    if _Prepared.token != state.token:
        _prepare(state)
    if _Prepared.run != state.run:
        _Prepared.run = state.run
        _Prepared.metadata_sent = False
    tree = WorkflowTree()
    try:
        with warnings.catch_warnings():
            # pydidas silences its plugins' warnings while it processes.
            warnings.simplefilter("ignore")
            tree.execute_process(int(index))
    except FileReadError:
        return UNREADABLE
    results = tree.get_current_results()
    arrays = {node_id: np.array(res, dtype=np.float32) for node_id, res in results.items()}
    metadata = None
    if not _Prepared.metadata_sent:
        metadata = frame_metadata(results)
        _Prepared.metadata_sent = True
    return arrays, metadata
