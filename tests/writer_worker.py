"""One write to a clustering run, in its own process, for the tests and the
crash benchmark of the run writer (``clustering.runs.writer``).

    python tests/writer_worker.py '<json>'

The JSON names ``dataset``, ``run_key`` and ``action`` (``compute``,
``merge``, ``split``, ``assign``, ``to_labels``, ``label``) with its
parameters. Prints ``ready`` once FiftyOne is loaded; with ``"barrier":
true`` it then waits for a line on stdin (so that several workers start
together); prints ``go`` just before the action, then ``ok <result>`` or
``error <message>``. The database comes from the environment
(``FIFTYONE_DATABASE_URI``).
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    spec = json.loads(sys.argv[1])
    import fiftyone as fo

    import clustering

    dataset = fo.load_dataset(spec["dataset"])
    key, action = spec["run_key"], spec["action"]
    calls = {
        "compute": lambda: clustering.compute_clusters(
            dataset, key, embeddings=spec.get("embeddings", "emb"), reduction="none", k=spec["k"], progress=False,
            overwrite=spec.get("overwrite", False),
        ).config.k,
        "merge": lambda: clustering.merge_clusters(dataset, key, spec["clusters"]),
        "split": lambda: clustering.split_cluster(dataset, key, spec["cluster"], k=spec.get("k", 2)),
        "assign": lambda: clustering.assign_new_samples(dataset, key),
        "to_labels": lambda: clustering.to_labels(dataset, key, spec["label_field"], overwrite=True),
        "label": lambda: clustering.label_clusters(dataset, key, **spec["kwargs"])["named"],
    }
    print("ready", flush=True)
    if spec.get("barrier"):
        sys.stdin.readline()
    print("go", flush=True)
    try:
        result = calls[action]()
    except Exception as e:  # reported to the parent, which judges it
        print(f"error {type(e).__name__}: {e}", flush=True)
        return
    print(f"ok {json.dumps(result)}", flush=True)


if __name__ == "__main__":
    main()
