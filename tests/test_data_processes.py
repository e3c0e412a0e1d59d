"""The pipeline with worker processes: the thread pipeline's batches, exact resume, skipped
files counted, no child process left after close."""
import numpy as np
import psutil
from test_data import _config, _equal, _pipeline, _solid_folder


def _children(before=frozenset()):
    """Child processes started since `before` (pids), without multiprocessing's resource
    tracker, which lives until the parent exits."""
    return [p for p in psutil.Process().children(recursive=True)
            if p.pid not in before and "resource_tracker" not in " ".join(p.cmdline())]


def test_worker_processes_give_the_thread_pipelines_batches(tmp_path):
    # Other tests of the session may own children (e.g. the web app's browser): not ours.
    others = frozenset(p.pid for p in psutil.Process().children(recursive=True))
    folder = _solid_folder(tmp_path, range(10, 250, 20))  # 12 images
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG garbage")
    config = _config("folder", size=16, batch=4, folder=folder, heldout_count=2)
    runs = {}
    for processes in (0, 2):
        config.data.worker_processes = processes
        run = _pipeline(config, seed=3)
        runs[processes] = [next(run) for _ in range(7)]  # crosses an epoch boundary
        if processes:
            assert _children(others)
            state = run.get_state()
            assert run.skipped_files == 1  # met in a worker process, counted here
        run.close()
        assert not _children(others)
    assert all(set(b) == {"image", "mask"} for b in runs[2])
    assert _equal(runs[0], runs[2])

    # Resume mid-epoch with worker processes: the next batches of an uninterrupted run.
    resumed = _pipeline(config, seed=3)
    resumed.set_state({"position": 16})
    assert _equal(runs[0][4:], [next(resumed) for _ in range(3)])
    resumed.close()
    assert state == {"position": 28} and not _children(others)
    assert np.all(runs[2][0]["mask"] <= 1)
