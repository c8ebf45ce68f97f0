"""Sharded embeddings: ``compute_embeddings(..., delegate=True, num_shards=4)``
queues 4 delegated operations over disjoint parts of the samples; real
``fiftyone delegated launch`` workers execute them side by side, and a shard
whose worker is killed is re-queued alone with FiftyOne's CLI."""

import os
import signal
import subprocess
import sys
import time

import pytest
from bson import ObjectId

from clustering.features import shards
from conftest import form

MODEL = "efficientnet-lite0"
FIFTYONE = os.path.join(os.path.dirname(sys.executable), "fiftyone")


def _launch_worker():
    return subprocess.Popen(
        [FIFTYONE, "delegated", "launch"],
        env=os.environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, killed as a whole
    )


def _stop(worker, sig=signal.SIGTERM):
    os.killpg(worker.pid, sig)
    worker.wait(timeout=60)


def _wait(condition, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_shards_cover_every_sample_once(demo_dataset):
    view = demo_dataset.skip(5).limit(101)
    specs = shards.shard_specs(view, 4)
    assert [s["index"] for s in specs] == [0, 1, 2, 3] and specs[0]["from_id"] is None and specs[3]["to_id"] is None
    parts = [shards.shard_view(view, s).values("id") for s in specs]
    assert sorted(sum(parts, [])) == sorted(view.values("id"))
    assert sorted(len(p) for p in parts) == [25, 25, 25, 26]
    assert len(shards.shard_specs(view.limit(2), 4)) == 2  # never more shards than samples
    with pytest.raises(ValueError, match="num_shards must be an integer >= 1"):
        shards.shard_specs(view, 0)


def test_the_form_offers_shards_to_delegated_runs(demo_dataset, plugin_operator):
    assert "num_shards" in form("compute_embeddings", demo_dataset, {"delegate": True})
    assert "num_shards" not in form("compute_embeddings", demo_dataset, {})
    with pytest.raises(ValueError, match="num_shards splits delegated runs: pass delegate=True"):
        plugin_operator("compute_embeddings")(demo_dataset, model=MODEL, embeddings_field="e", num_shards=2)


def test_two_workers_run_four_shards_and_a_killed_shard_is_rerun(demo_dataset, plugin_operator, fo):
    from fiftyone.operators.delegated import DelegatedOperationService

    dataset = demo_dataset
    dataset.persistent = True  # the workers must find it
    service = DelegatedOperationService()
    workers = []
    try:
        queued = plugin_operator("compute_embeddings")(
            dataset, model=MODEL, embeddings_field="emb", delegate=True, num_shards=4, num_workers=0
        )
        ids = [ObjectId(i) for i in queued["operations"]]
        assert len(ids) == 4 and [s["index"] for s in queued["shards"]] == [0, 1, 2, 3]
        assert all(service.get(i).run_state == "queued" for i in ids)
        assert not dataset.has_field("emb")

        # a worker claims a shard and is killed while executing it
        workers.append(_launch_worker())
        killed = _wait(lambda: next((i for i in ids if service.get(i).run_state == "running"), None), 180, "a claim")
        _stop(workers.pop(), signal.SIGKILL)
        assert service.get(killed).run_state == "running"  # stuck: nobody will finish it

        # FiftyOne's CLI marks it failed and queues it again, alone
        subprocess.run([FIFTYONE, "delegated", "fail", str(killed)], env=os.environ, check=True, capture_output=True)
        out = subprocess.run(
            [FIFTYONE, "delegated", "rerun", str(killed)], env=os.environ, check=True, capture_output=True, text=True
        ).stdout
        rerun = ObjectId(out.strip().split("'")[-2])
        assert service.get(killed).run_state == "failed" and service.get(rerun).run_state == "queued"

        # two workers execute the other three shards and the rerun side by side
        workers += [_launch_worker(), _launch_worker()]
        todo = [i for i in ids if i != killed] + [rerun]
        _wait(lambda: all(service.get(i).run_state in ("completed", "failed") for i in todo), 600, "the shards")
        docs = [service.get(i) for i in todo]
        assert [d.run_state for d in docs] == ["completed"] * 4, [d.result for d in docs]
    finally:
        for worker in workers:
            _stop(worker)
        dataset.persistent = False

    results = [d.result.result for d in docs]
    assert sorted(r["shard"]["index"] for r in results) == [0, 1, 2, 3]  # each shard completed once
    assert sum(r["num_embedded"] for r in results) == len(dataset)
    assert len({r["executed_by"] for r in results}) == 2  # both workers took shards
    dataset.reload()
    assert dataset.exists("emb").count() == len(dataset)
    operations = service.list_operations(operator=f"{plugin_operator('compute_embeddings').uri}", dataset_name=dataset.name)
    assert len(operations) == 5  # the four shards and the rerun: nothing executed twice
