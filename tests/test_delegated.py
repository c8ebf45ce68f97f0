"""A clustering run (a two-level tree) queued for delegation and executed by
`fiftyone delegated launch` in another process."""

import os
import signal
import subprocess
import time

import numpy as np


def test_delegated_run_is_executed_by_the_launcher(pixel_dataset, plugin_operator, fo):
    from fiftyone.operators.delegated import DelegatedOperationService

    pixel_dataset.persistent = True  # the launcher process must find it
    try:
        queued = plugin_operator("compute_clusters")(
            pixel_dataset, run_key="bg", embeddings="pixels", reduction="none", levels=[4, 2], loss="correntropy",
            delegate=True,
        )
        assert queued.delegated
        assert "bg" not in pixel_dataset.list_runs()  # nothing ran yet

        service = DelegatedOperationService()
        op_id = queued.result["id"]
        launcher = subprocess.Popen(
            [os.path.join(os.path.dirname(os.sys.executable), "fiftyone"), "delegated", "launch"],
            env=os.environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.time() + 240
            state = None
            while time.time() < deadline:
                state = service.get(op_id).run_state
                if state in ("completed", "failed"):
                    break
                time.sleep(1)
        finally:
            os.killpg(launcher.pid, signal.SIGTERM)
            output = launcher.communicate(timeout=30)[0].decode(errors="replace")
        assert state == "completed", f"state={state}\n{output[-3000:]}\n{service.get(op_id).run_result}"

        pixel_dataset.reload()
        assert "bg" in pixel_dataset.list_runs()
        config = pixel_dataset.get_run_info("bg").config
        assert config.loss == "correntropy" and config.loss_param > 0
        labels = np.array(pixel_dataset.values("bg_cluster"))
        assert set(labels) == {0, 1, 2, 3}
        # the level below: each cluster in 2, same loss, its path naming its parent
        level = pixel_dataset.get_run_info("bg_l2").config
        assert level.parent_run == "bg" and level.loss == "correntropy"
        paths = pixel_dataset.values("bg_l2_path")
        assert all(p.split("/")[0] == str(c) for p, c in zip(paths, labels))
        assert len(set(paths)) == 8
    finally:
        pixel_dataset.persistent = False
