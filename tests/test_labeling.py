"""Cluster naming: the real ``openai`` client talking HTTP to a local
OpenAI-compatible server (tests/openai_stub_server.py), real images, a real
MongoDB; and the offline provider with the real ImageNet classifier."""

import base64
import hashlib
import io
import json
import logging
import os

import numpy as np
import pytest

import clustering
from clustering.naming import labeling as cl
from openai_stub_server import OpenAIStub, image_urls

KEY = "sk-test-Zq8vY3secretkey"


@pytest.fixture
def stub():
    with OpenAIStub() as server:
        yield server


@pytest.fixture(scope="module")
def clustered_base(fo, demo_images_dir):
    """The demo dataset (392 real images) with a ``pixels`` vector field and
    run ``c`` (3 clusters, sklearn k-means on pixels); built once per module."""
    from clustering.datasets import load_demo_dataset
    from conftest import pixel_features

    dataset = load_demo_dataset("labeling-base", images_dir=demo_images_dir, persistent=False, overwrite=True)
    ids, paths = dataset.values(["id", "filepath"])
    dataset.set_values("pixels", dict(zip(ids, list(pixel_features(paths)))), key_field="id")
    clustering.compute_clusters(dataset, "c", embeddings="pixels", reduction="none", k=3, method="kmeans", progress=lambda *a: None)
    yield dataset
    dataset.delete()


@pytest.fixture
def clustered(clustered_base, fo, request):
    """A fresh clone of ``clustered_base`` (same sample ids, run ``c`` and its
    results), deleted after the test."""
    dataset = clustered_base.clone("labeling-" + request.node.name[:50])
    yield dataset
    dataset.delete()


def _label(dataset, stub, **kwargs):
    kwargs.setdefault("api_key", KEY)
    kwargs.setdefault("timeout", 10)
    kwargs.setdefault("max_retries", 0)
    return clustering.label_clusters(dataset, "c", base_url=stub.base_url, progress=lambda *a: None, **kwargs)


def _decode(url):
    head, b64 = url.split(",", 1)
    assert head.startswith("data:") and head.endswith(";base64")
    return head[len("data:") : -len(";base64")], base64.b64decode(b64)


def _sha(data):
    return hashlib.sha256(data).hexdigest()


def _db_collections_containing(fo, secret):
    """The database collections where ``secret`` occurs anywhere: every
    document of every collection (datasets, samples, runs, delegated ops,
    GridFS results)."""
    import fiftyone.core.odm as foo_odm
    from bson import json_util

    db = foo_odm.get_db_conn()
    needle = secret.encode()
    found = set()
    for name in db.list_collection_names():
        for doc in db[name].find({}):
            data = doc.get("data")  # GridFS chunk
            if needle in json_util.dumps(doc).encode() or (
                isinstance(data, (bytes, bytearray)) and needle in bytes(data)
            ):
                found.add(name)
                break
    return found


def _check_names_stored(dataset, names):
    labels, values = dataset.values(["c_cluster", "c_name"])
    for label, value in zip(labels, values):
        assert value == names.get(str(label)), (label, value)


def test_request_shape_mime_types_and_stored_names(clustered, stub, fo, tmp_path, caplog):
    from PIL import Image

    for name in ("openai", "httpx", "httpx2", "clustering"):
        caplog.set_level(logging.DEBUG, logger=name)
    dataset = clustered
    results = clustering.load_clustering_results(dataset, "c")
    labels_before = dataset.values("c_cluster")
    reps = results.representatives

    # cluster 0's representatives become JPEG files; one of cluster 1's a large PNG
    new_paths = {}
    for sid, path in zip(*dataset.select(reps["0"]).values(["id", "filepath"])):
        jpg = str(tmp_path / (os.path.basename(path)[:-4] + ".jpg"))
        Image.open(path).convert("RGB").save(jpg, quality=90)
        new_paths[sid] = jpg
    big_id = reps["1"][1]
    big = str(tmp_path / "big.png")
    Image.open(dataset[big_id].filepath).convert("RGB").resize((1200, 800)).save(big)
    new_paths[big_id] = big
    dataset.set_values("filepath", new_paths, key_field="id")

    id_of_bytes = {}
    for sid, path in zip(*dataset.values(["id", "filepath"])):
        with open(path, "rb") as f:
            id_of_bytes[_sha(f.read())] = sid
    ids, losses, labels = map(np.array, dataset.values(["id", "c_loss", "c_cluster"]))

    summary = _label(dataset, stub, model="my-vision-model", num_images=7, max_concurrency=2, neighbors=0)

    assert summary["requests_sent"] == 3 and len(stub.requests) == 3
    assert summary["errors"] == {}
    assert sorted(r["cluster"] for r in stub.requests) == [0, 1, 2]
    for request in stub.requests:
        c = request["cluster"]
        body = request["body"]
        assert request["path"] == "/v1/chat/completions"  # base_url honoured
        assert request["headers"]["authorization"] == f"Bearer {KEY}"
        assert body["model"] == "my-vision-model"
        assert body["response_format"]["type"] == "json_schema"
        urls = image_urls(body)
        assert len(urls) == 7
        sent = []
        for url in urls:
            mime, data = _decode(url)
            image = Image.open(io.BytesIO(data))
            assert mime == Image.MIME[image.format]  # the real type of the bytes
            if c == 0 and len(sent) < 5:
                assert mime == "image/jpeg"
            sid = id_of_bytes.get(_sha(data))
            if sid is None:  # the large image, downscaled and re-encoded
                assert mime == "image/png" and image.size == (512, 341)
                sid = big_id
            sent.append(sid)
        # the stored ranking first, then the next best by loss to the center
        assert sent[:5] == reps[str(c)]
        members = np.flatnonzero(labels == c)
        by_loss = [s for s in ids[members[np.argsort(losses[members], kind="stable")]] if s not in reps[str(c)]]
        assert sent[5:] == by_loss[:2]

    expected = {"0": "cluster 0", "1": "cluster 1", "2": "cluster 2"}
    assert summary["names"] == expected
    assert summary["model"] == "my-vision-model" and summary["provider"] == "openai"
    dataset.reload()
    results = clustering.load_clustering_results(dataset, "c")
    assert results.names == expected
    assert results.descriptions["0"] == "A stub description."
    assert results.naming["provider"] == "openai" and results.naming["model"] == "my-vision-model"
    assert dataset.get_run_info("c").config.name_field == "c_name"
    assert isinstance(dataset.get_field("c_name"), fo.StringField)
    _check_names_stored(dataset, expected)
    assert dataset.values("c_cluster") == labels_before  # labels untouched
    assert KEY not in caplog.text


def test_retries_timeouts_and_per_cluster_errors_then_fill_in_missing(clustered, stub):
    stub.script = {
        0: [stub.status(429), stub.reply("alpha")],  # rate limited once
        1: [stub.status(500)],  # never recovers
        2: [stub.hang(30)],  # longer than the client timeout
    }
    summary = _label(clustered, stub, timeout=1, max_retries=1)

    assert len(stub.requests_for(0)) == 2  # 429 retried by the client
    assert len(stub.requests_for(1)) == 2  # 1 + max_retries
    assert len(stub.requests_for(2)) == 2
    assert summary["names"] == {"0": "alpha"}
    assert set(summary["errors"]) == {"1", "2"}
    assert "HTTP 500" in summary["errors"]["1"]
    assert "timed out" in summary["errors"]["2"]
    rows = {row["cluster"]: row for row in summary["clusters"]}
    assert rows[0]["status"] == "named" and rows[1]["status"] == "error"
    _check_names_stored(clustered, {"0": "alpha"})

    # re-run (overwrite=False): only the missing names are asked for
    stub.requests.clear()
    stub.script = {1: [stub.reply("beta")], 2: [stub.reply("gamma")]}
    summary = _label(clustered, stub)
    assert sorted(r["cluster"] for r in stub.requests) == [1, 2]
    assert summary["skipped"] == ["0"] and summary["errors"] == {}
    names = {"0": "alpha", "1": "beta", "2": "gamma"}
    assert summary["names"] == names
    _check_names_stored(clustered, names)

    # overwrite=True asks for all; a failure keeps the existing name
    stub.requests.clear()
    stub.script = {0: [stub.reply("delta")], 1: [stub.status(503)]}
    summary = _label(clustered, stub, overwrite=True)
    assert len(stub.requests) == 3
    assert summary["names"] == {"0": "delta", "1": "beta", "2": "cluster 2"}
    assert "HTTP 503" in summary["errors"]["1"]
    _check_names_stored(clustered, summary["names"])


def test_missing_key_fails_before_any_request(clustered, stub, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        _label(clustered, stub, api_key=None)
    assert stub.requests == []
    assert not clustered.has_field("c_name")


def test_dry_run_counts_and_sends_nothing(clustered, stub, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # no key needed
    results = clustering.load_clustering_results(clustered, "c")
    selected = cl._select_images(results, [0, 1, 2], 7)
    paths = dict(zip(*clustered.values(["id", "filepath"])))
    own = sum(os.path.getsize(paths[s]) for ids in selected.values() for s in ids)
    # each request also shows the two other clusters (the default 2 neighbors), 2 images each
    contrast = sum(os.path.getsize(paths[s]) for c in selected for o in selected if o != c for s in selected[o][:2])
    expected_bytes = own + contrast

    summary = _label(clustered, stub, api_key=None, dry_run=True, num_images=7)
    assert stub.requests == []
    assert summary["requests_sent"] == 0 and summary["requests_planned"] == 3
    assert summary["images"] == 3 * (7 + 2 * 2)
    assert summary["image_bytes"] == expected_bytes  # small PNGs go as they are
    assert summary["payload_bytes"] > expected_bytes * 4 / 3
    assert not clustered.has_field("c_name")
    assert not (clustering.load_clustering_results(clustered, "c").names)

    # with one cluster named, a dry run plans only the others (5 images each, 2 x 2 of neighbors)
    stub.script = {0: [stub.reply("named")], 1: [stub.status(400, {})], 2: [stub.status(400, {})]}
    _label(clustered, stub, num_images=1)
    stub.requests.clear()
    summary = _label(clustered, stub, dry_run=True)
    assert summary["requests_planned"] == 2 and summary["images"] == 2 * (5 + 2 * 2)
    assert stub.requests == []


def test_duplicate_names_are_made_unique(clustered, stub):
    stub.default = lambda c, body: stub.reply("Dogs" if c == 1 else "dogs")
    summary = _label(clustered, stub)
    names = {"0": "dogs (0)", "1": "Dogs (1)", "2": "dogs (2)"}
    assert summary["names"] == names
    _check_names_stored(clustered, names)
    assert len(set(clustered.distinct("c_name"))) == 3

    # the name field belongs to the run: renamed and deleted with it
    clustering.rename_run(clustered, "c", "d")
    assert clustered.get_run_info("d").config.name_field == "d_name"
    assert clustered.distinct("d_name") == sorted(names.values()) and not clustered.has_field("c_name")
    clustering.delete_run(clustered, "d")
    assert not clustered.has_field("d_name")


def test_plain_json_fallback_when_response_format_is_refused(clustered, stub):
    stub.reject_response_format = True
    stub.default = lambda c, body: stub.reply(
        None, text=f'Sure! Here is the name:\n```json\n{{"name": "Bricks {c}.", "description": "Walls."}}\n```\nHope it helps.'
    )
    summary = _label(clustered, stub, max_concurrency=1)
    assert summary["names"] == {"0": "Bricks 0", "1": "Bricks 1", "2": "Bricks 2"}
    assert summary["descriptions"]["1"] == "Walls."
    assert "response_format" in stub.requests[0]["body"]
    assert all("response_format" not in r["body"] for r in stub.requests[1:])
    assert len(stub.requests) == 4  # one refused request, then plain JSON


def test_parse_reply_is_tolerant():
    assert cl.parse_reply('{"name": "red bricks", "description": "Walls."}') == ("red bricks", "Walls.")
    assert cl.parse_reply('Here you go: {"Name": "grass"} done') == ("grass", None)
    assert cl.parse_reply('```\n{"name": " gravel  path. "}\n```') == ("gravel path", None)
    assert cl.parse_reply("Name: human faces") == ("human faces", None)
    with pytest.raises(ValueError):
        cl.parse_reply("I cannot determine a good name for these images, sorry about that.")
    with pytest.raises(ValueError):
        cl.parse_reply('{"description": "no name"}')


def test_key_is_never_stored(clustered, stub, fo, plugin_operator, monkeypatch):
    secret = "sk-env-9f8e7d6c5b4a-never-store"
    monkeypatch.setenv("OPENAI_API_KEY", secret)  # resolved as the plugin secret
    summary = plugin_operator("label_clusters")(
        clustered, run_key="c", base_url=stub.base_url, model="op-model", timeout=10, max_retries=0
    )
    assert summary["names"] == {"0": "cluster 0", "1": "cluster 1", "2": "cluster 2"}
    assert {r["headers"]["authorization"] for r in stub.requests} == {f"Bearer {secret}"}
    assert {r["body"]["model"] for r in stub.requests} == {"op-model"}
    _check_names_stored(clustered, summary["names"])

    # through the library with an explicit key too
    stub.script = {0: [stub.status(500)]}
    _label(clustered, stub, api_key=KEY, overwrite=True)
    assert not _db_collections_containing(fo, secret)
    assert not _db_collections_containing(fo, KEY)
    assert "runs" in _db_collections_containing(fo, "c_name")  # the search does see the run
    info = clustered.get_run_info("c")
    assert secret not in json.dumps(info.config.serialize())
    assert KEY not in json.dumps(clustering.load_clustering_results(clustered, "c").serialize(), default=str)

    # a queued delegated operation carries no key either (the launcher resolves it)
    queued = plugin_operator("label_clusters")(clustered, run_key="c", base_url=stub.base_url, delegate=True)
    assert queued.delegated
    assert "delegated_ops" in _db_collections_containing(fo, stub.base_url)
    assert not _db_collections_containing(fo, secret)


def test_operator_dry_run_and_missing_key(clustered, stub, plugin_operator, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    op = plugin_operator("label_clusters")
    summary = op(clustered, run_key="c", base_url=stub.base_url, dry_run=True, num_images=2)
    assert summary["dry_run"] and summary["images"] == 3 * (2 + 2 * 2) and summary["requests_sent"] == 0
    with pytest.raises(Exception, match="OPENAI_API_KEY"):
        op(clustered, run_key="c", base_url=stub.base_url)
    assert stub.requests == []


def test_offline_names_are_imagenet_classes(clustered, stub):
    from clustering.features.backbones import imagenet_class_names

    summary = clustering.label_clusters(clustered, "c", provider="offline", num_images=4, progress=lambda *a: None)
    assert stub.requests == [] and summary["requests_sent"] == 0
    assert summary["provider"] == "offline" and summary["errors"] == {}
    classes = set(imagenet_class_names())
    results = clustering.load_clustering_results(clustered, "c")
    assert set(results.names) == {"0", "1", "2"}
    for c, name in results.names.items():
        base = name[: -len(f" ({c})")] if name.endswith(f" ({c})") else name
        assert base in classes, name
        assert "ImageNet" in results.descriptions[c]
    assert results.naming["provider"] == "offline"
    _check_names_stored(clustered, results.names)


def test_hdbscan_noise_is_not_named(clustered, stub):
    pixel_dataset = clustered
    clustering.compute_clusters(
        pixel_dataset, "c", embeddings="pixels", reduction="none", method="hdbscan", min_cluster_size=20,
        overwrite=True, progress=lambda *a: None,
    )
    labels = np.array(pixel_dataset.values("c_cluster"))
    assert (labels == -1).any()
    summary = _label(pixel_dataset, stub)
    clusters = sorted(set(labels[labels >= 0].tolist()))
    assert sorted(r["cluster"] for r in stub.requests) == clusters
    assert set(summary["names"]) == {str(c) for c in clusters}
    names = np.array(pixel_dataset.values("c_name"), dtype=object)
    assert all(n is None for n in names[labels == -1])
    assert all(n == f"cluster {c}" for n, c in zip(names[labels >= 0], labels[labels >= 0]))


def test_silent_endpoint_fails_fast_and_names_nothing(clustered, stub):
    """An endpoint that accepts the connection and never answers: the first
    request (sent alone, no retries) decides, within 2x the request timeout."""
    import time

    stub.default = lambda cluster, body: stub.hang(30)
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"failed the first request \(request timed out"):
        _label(clustered, stub, timeout=2, max_retries=3)
    assert time.perf_counter() - t0 < 2 * 2
    assert len(stub.requests) == 1
    assert not clustered.has_field("c_name")
    assert clustering.check_run(clustered, "c")["state"] == "consistent"


def test_every_request_failing_raises_and_creates_no_name_field(clustered, stub):
    stub.default = lambda cluster, body: stub.status(500)
    with pytest.raises(RuntimeError, match=r"No cluster of run 'c' could be named \(3 failed\): cluster \d: HTTP 500"):
        _label(clustered, stub, max_retries=1)
    assert not clustered.has_field("c_name")
    assert not clustering.load_clustering_results(clustered, "c").names


def test_a_rejected_key_fails_the_first_request(clustered, stub):
    stub.default = lambda cluster, body: stub.status(401, {})
    with pytest.raises(RuntimeError, match="HTTP 401"):
        _label(clustered, stub)
    assert len(stub.requests) == 1 and not clustered.has_field("c_name")


def test_deadline_stores_what_was_named_in_time(clustered, stub):
    import time

    stub.script = {0: [stub.reply("alpha")]}
    stub.default = lambda cluster, body: stub.hang(30)
    t0 = time.perf_counter()
    summary = _label(clustered, stub, timeout=20, deadline=3)
    assert time.perf_counter() - t0 < 10
    assert summary["names"] == {"0": "alpha"}
    assert all("deadline of 3 s" in summary["errors"][c] for c in ("1", "2"))
    _check_names_stored(clustered, {"0": "alpha"})


def test_requests_show_sibling_clusters_and_shared_names_are_asked_again(clustered, stub):
    """Two clusters answer the same name: the second round asks the smaller
    one again with the name taken; the requests carry the neighbors' images."""
    results = clustering.load_clustering_results(clustered, "c")
    sizes = {c: int(results.cluster_sizes[c]) for c in results.cluster_ids()}
    big, small, other = sorted(sizes, key=sizes.get, reverse=True)
    stub.script = {big: [stub.reply("textures")], small: [stub.reply("Textures"), stub.reply("gravel")],
                   other: [stub.reply("faces")]}
    paths = dict(zip(*clustered.values(["id", "filepath"])))
    by_bytes = {}
    for sid, path in paths.items():
        with open(path, "rb") as f:
            by_bytes[_sha(f.read())] = sid

    summary = _label(clustered, stub, num_images=3, neighbors=1, neighbor_images=2)
    assert summary["names"] == {str(big): "textures", str(small): "gravel", str(other): "faces"}
    assert summary["renamed"] == [str(small)] and summary["requests_sent"] == 4
    centers = np.asarray(results.centers)
    for request in stub.requests:
        c = request["cluster"]
        urls = image_urls(request["body"])
        sent = [by_bytes[_sha(_decode(u)[1])] for u in urls]
        nearest = min((s for s in sizes if s != c), key=lambda s: np.linalg.norm(centers[c] - centers[s]))
        assert sent[:3] == results.representatives[str(c)][:3]
        assert sent[3:] == results.representatives[str(nearest)][:2]  # the sibling's images, for contrast
        texts = " ".join(p["text"] for p in request["body"]["messages"][1]["content"] if p["type"] == "text")
        assert f"neighboring cluster ({nearest})" in texts
    again = stub.requests_for(small)[-1]["body"]["messages"][1]["content"][-1]["text"]
    assert "already named" in again and "'textures'" in again.lower()
    _check_names_stored(clustered, summary["names"])


def test_offline_names_differ_among_siblings(clustered):
    summary = clustering.label_clusters(clustered, "c", provider="offline", progress=False)
    names = list(summary["names"].values())
    assert len({n.casefold() for n in names}) == len(names) and not any(n.endswith(")") for n in names)
