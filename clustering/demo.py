"""The demo: cluster a few hundred real images that ship with scikit-image.

``python -m clustering.demo`` (what ``make demo`` runs) builds the persistent
dataset ``imgclust-demo`` (faces, non-faces, brick/grass/gravel textures, with
the true class in ``ground_truth``), embeds it with the offline EfficientNet-Lite0,
runs the ``compute_clusters`` operator with squared L2 and a robust loss, and
prints cluster sizes, representatives and NMI against ``ground_truth``.
Re-running it reuses the dataset and embeddings and overwrites the two runs.
``--app`` then serves the FiftyOne App on the dataset.
"""

import argparse
import os
import time
from collections import Counter

OPERATOR = "@imgclust/clustering/compute_clusters"
MODEL = "efficientnet-lite0"
RUNS = (("demo_squared", "squared"), ("demo_correntropy", "correntropy"))


def nmi(truth, labels):
    from sklearn.metrics import normalized_mutual_info_score

    return normalized_mutual_info_score(truth, labels)


def report(dataset, run_key):
    import clustering

    results = clustering.load_clustering_results(dataset, run_key)
    config = results.config
    view = dataset.load_run_view(run_key).exists(config.label_field)
    truth, labels, paths, ids = view.values(
        ["ground_truth.label", config.label_field, "filepath", "id"]
    )
    by_id = dict(zip(ids, zip(paths, truth)))
    param = f", {config.loss_param:.4g}" if config.loss_param else ""
    print(f"\n== {run_key}: loss {config.loss}{param}, k={config.k}, "
          f"objective {results.objective:.5g}, {results.timings['total_s']:.1f} s")
    stability = results.stability or {}
    print(f"   {'cluster':>7} {'size':>5} {'stability':>9}  {'majority class':<22} representative")
    for c in results.cluster_ids():
        members = [t for t, l in zip(truth, labels) if l == c]
        cls, count = Counter(members).most_common(1)[0]
        rep_path, rep_truth = by_id[results.representatives[str(c)][0]]
        score = stability.get(str(c))
        print(f"   {c:>7} {len(members):>5} {'n/a' if score is None else format(score, '.2f'):>9}  "
              f"{cls + f' ({count}/{len(members)})':<22} {os.path.basename(rep_path)} ({rep_truth})")
    score = nmi(truth, labels)
    print(f"   NMI vs ground_truth: {score:.3f}")
    return score


def run_demo(k=5):
    import fiftyone as fo
    import fiftyone.operators as foo

    from clustering.datasets import load_demo_dataset

    t0 = time.perf_counter()
    dataset = load_demo_dataset()
    print(f"dataset '{dataset.name}': {len(dataset)} images, classes "
          f"{dict(Counter(dataset.values('ground_truth.label')))}")
    compute_clusters = foo.get_operator(OPERATOR)
    scores = {}
    for run_key, loss in RUNS:
        compute_clusters(
            dataset,
            run_key=run_key,
            model=MODEL,
            k=k,
            loss=loss,  # the plugin's defaults otherwise: UMAP to 5-d, 10 restarts
            overwrite=True,
        )
        scores[run_key] = report(dataset, run_key)
    print(f"\nruns on '{dataset.name}': {dataset.list_runs()}  ({time.perf_counter() - t0:.0f} s)")
    print("open it in the App: make app")
    return scores


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--app", action="store_true", help="serve the App on the demo dataset")
    parser.add_argument("--port", type=int, default=5151)
    parser.add_argument("--address", default="127.0.0.1")
    args = parser.parse_args()
    if args.app:
        import fiftyone as fo

        from clustering.datasets import load_demo_dataset

        session = fo.launch_app(load_demo_dataset(), port=args.port, address=args.address, remote=True)
        print(f"App at http://{args.address}:{args.port} (Ctrl-C to stop)")
        session.wait(-1)
    else:
        run_demo(k=args.k)


if __name__ == "__main__":
    main()
