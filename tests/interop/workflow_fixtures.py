"""Workflows for the pydidas workflow tests, and a controller script for namespace hosts.

``real_workflow(folder)`` writes frames and a FrameLoader -> CropAndBinImage
-> Sum2dData workflow over them, with the numpy computation of the same
steps; ``dummy_workflow(folder)`` the tree of pydidas's own runner tests
(its unittest_objects plugins). Frames hold small whole numbers, so every
sum is exact in float32 and the results must be equal, not close.

``python -m tests.interop.workflow_fixtures BIND KEY_FILE TREE SCAN EXP OUTDIR``
runs ``ExecuteWorkflowRunner.process_scan()`` with ``install(BIND,
key_file=...)``: daemons that connect to BIND do the work.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

N_FRAMES = 16
FRAME_SHAPE = (36, 44)
ROI = (2, 34, 4, 40)  # ylow, yhigh, xlow, xhigh
BINNING = 2
DUMMY_SCAN = (5, 7, 3)
DUMMY_RESULT_SHAPE = (10, 10)


@dataclasses.dataclass
class Workflow:
    tree: Path
    scan: Path
    exp: Path
    # node file name -> the data it must hold (None: only its shape is known)
    expected: dict[str, np.ndarray | None]
    shape: dict[str, tuple[int, ...]]


def frame(i: int) -> np.ndarray:
    rng = np.random.default_rng(1000 + i)
    return rng.integers(0, 50, size=FRAME_SHAPE).astype(np.float64)


def crop_and_bin(image: np.ndarray) -> np.ndarray:
    y0, y1, x0, x1 = ROI
    cropped = image[y0:y1, x0:x1]
    h, w = cropped.shape
    return cropped.reshape(h // BINNING, BINNING, w // BINNING, BINNING).mean(axis=(1, 3))


def _write_contexts(
    folder: Path, scan_shape: tuple[int, ...], **scan_params: object
) -> tuple[Path, Path]:
    from pydidas.contexts.diff_exp import DiffractionExperiment
    from pydidas.contexts.scan import Scan

    scan = Scan()
    for name, value in scan_params.items():
        scan.set_param_value(name, value)
    scan.set_param_value("scan_dim", len(scan_shape))
    for dim, n in enumerate(scan_shape):
        scan.set_param_value(f"scan_dim{dim}_n_points", n)
    scan.export_to_file(folder / "scan.yml", overwrite=True)
    DiffractionExperiment().export_to_file(folder / "exp.yml", overwrite=True)
    return folder / "scan.yml", folder / "exp.yml"


def real_workflow(folder: Path, n_frames: int = N_FRAMES) -> Workflow:
    from pydidas.plugins import PluginCollection
    from pydidas.workflow import ProcessingTree

    frames_dir = folder / "frames"
    frames_dir.mkdir(parents=True, exist_ok=True)
    images = [frame(i) for i in range(n_frames)]
    for i, image in enumerate(images):
        np.save(frames_dir / f"frame_{i:03d}.npy", image)
    plugins = PluginCollection()
    # The scan names the files: frame_000.npy, frame_001.npy, ... in frames/.
    loader = plugins.get_plugin_by_name("FrameLoader")()
    crop = plugins.get_plugin_by_name("CropAndBinImage")()
    y0, y1, x0, x1 = ROI
    for name, value in (
        ("use_roi", True),
        ("roi_ylow", y0),
        ("roi_yhigh", y1),
        ("roi_xlow", x0),
        ("roi_xhigh", x1),
        ("binning", BINNING),
        ("keep_results", True),
    ):
        crop.set_param_value(name, value)
    total = plugins.get_plugin_by_name("Sum2dData")()
    tree = ProcessingTree()
    tree.create_and_add_node(loader)
    tree.create_and_add_node(crop)
    tree.create_and_add_node(total)
    tree.export_to_file(folder / "tree.yml", overwrite=True)
    scan, exp = _write_contexts(
        folder,
        (n_frames,),
        scan_base_directory=frames_dir,
        scan_name_pattern="frame_###.npy",
        pattern_number_offset=0,
        pattern_number_delta=1,
    )
    binned = np.stack([crop_and_bin(image) for image in images])
    # Sum2dData's result at each point is a 1-element array.
    sums = binned.sum(axis=(1, 2))[:, None]
    return Workflow(
        folder / "tree.yml",
        scan,
        exp,
        {"node_01.nxs": binned, "node_02.nxs": sums},
        {"node_01.nxs": binned.shape, "node_02.nxs": sums.shape},
    )


def break_point(folder: Path, index: int) -> None:
    """Make scan point ``index`` of ``real_workflow(folder)`` raise on its worker.

    Its frame becomes a 1-d array: FrameLoader reads it, and pydidas then
    raises ``PydidasConfigError`` when it sets the image axes on it.
    """
    np.save(folder / "frames" / f"frame_{index:03d}.npy", np.zeros(5))


def dummy_workflow(folder: Path) -> Workflow:
    from pydidas import unittest_objects
    from pydidas.workflow import ProcessingTree

    folder.mkdir(parents=True, exist_ok=True)
    tree = ProcessingTree()
    tree.create_and_add_node(unittest_objects.DummyLoader())
    tree.create_and_add_node(unittest_objects.DummyProc())
    tree.create_and_add_node(unittest_objects.DummyProc(), parent=tree.root)
    tree.export_to_file(folder / "tree.yml", overwrite=True)
    scan, exp = _write_contexts(folder, DUMMY_SCAN)
    shape = DUMMY_SCAN + DUMMY_RESULT_SHAPE
    return Workflow(
        folder / "tree.yml",
        scan,
        exp,
        {"node_01.nxs": None, "node_02.nxs": None},
        {"node_01.nxs": shape, "node_02.nxs": shape},
    )


def process_scan(workflow: Workflow, outdir: Path) -> None:
    """pydidas's ExecuteWorkflowRunner over ``workflow``, into ``outdir``."""
    from pydidas.apps import ExecuteWorkflowRunner

    runner = ExecuteWorkflowRunner(
        workflow=workflow.tree,
        scan=workflow.scan,
        diffraction_exp=workflow.exp,
        output_dir=outdir,
    )
    runner.process_scan()


def register_dummy_plugins() -> None:
    from pydidas import unittest_objects
    from pydidas.plugins import PluginCollection

    path = Path(unittest_objects.__file__).parent
    collection = PluginCollection()
    if path not in collection.registered_paths:
        collection.find_and_register_plugins(path)


def read_outputs(outdir: Path) -> dict[str, np.ndarray]:
    import h5py

    out = {}
    for path in sorted(outdir.iterdir()):
        with h5py.File(path, "r") as f:
            out[path.name] = f["entry/data/data"][()]
    return out


def check_outputs(outdir: Path, workflow: Workflow) -> None:
    """The files of ``outdir`` are those of run-pydidas-workflow, with the right data."""
    data = read_outputs(outdir)
    assert sorted(data) == sorted(workflow.shape), sorted(data)
    for name, want in workflow.expected.items():
        assert data[name].shape == workflow.shape[name], (name, data[name].shape)
        assert not np.isnan(data[name]).any(), f"{name}: scan points left empty"
        if want is not None:
            wrong = [i for i in range(want.shape[0]) if not np.array_equal(data[name][i], want[i])]
            assert not wrong, f"{name}: scan points {wrong} hold wrong data"


def run_on_daemons(argv: list[str]) -> int:
    bind, key_file, tree, scan, exp, outdir = argv
    # pydidas's application and runner read sys.argv themselves.
    sys.argv = sys.argv[:1]
    from pydidas_qtcore import PydidasQApplication

    app = PydidasQApplication.instance() or PydidasQApplication([])
    import zmqworkers.pydidas as zp

    register_dummy_plugins()
    zp.install(bind, key_file=key_file)
    process_scan(Workflow(Path(tree), Path(scan), Path(exp), {}, {}), Path(outdir))
    del app
    return 0


if __name__ == "__main__":
    sys.exit(run_on_daemons(sys.argv[1:]))
