"""Small labelled sets that need no download.

``write_demo_images`` writes scikit-image's faces / non-faces (LFW subset) and
crops of its brick, grass and gravel textures as PNG files; ``load_demo_dataset``
wraps them in a FiftyOne dataset with the known class in ``ground_truth``.
``contaminated_blobs`` draws Gaussian clusters with far outliers or heavy-tailed
noise, the setting where the choice of loss matters; ``separated_blobs`` draws
clusters of given sizes whose centers keep a minimum distance.
"""

import os

import numpy as np

DEMO_DATASET_NAME = "imgclust-demo"
DEMO_CLASSES = ("face", "non-face", "brick", "grass", "gravel")


def _uint8(image):
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.clip(np.round(255 * image), 0, 255).astype(np.uint8)
    return image


def demo_images(texture_crop=64, face_size=96):
    """Yields ``(name, uint8 image, class)`` for the demo set (392 images)."""
    import skimage.data
    from PIL import Image

    faces = skimage.data.lfw_subset()  # 100 faces, then 100 non-faces
    for i, image in enumerate(faces):
        label = "face" if i < 100 else "non-face"
        pil = Image.fromarray(_uint8(image)).resize(
            (face_size, face_size), Image.BICUBIC
        )
        yield f"{label}-{i % 100:03d}", np.asarray(pil), label

    for texture in ("brick", "grass", "gravel"):
        image = getattr(skimage.data, texture)()
        h, w = image.shape[:2]
        n = 0
        for top in range(0, h - texture_crop + 1, texture_crop):
            for left in range(0, w - texture_crop + 1, texture_crop):
                crop = image[top : top + texture_crop, left : left + texture_crop]
                yield f"{texture}-{n:03d}", crop, texture
                n += 1


def write_demo_images(images_dir, **kwargs):
    """Writes the demo images as PNG files (skipping existing ones) and returns
    a list of ``(filepath, class)``."""
    from PIL import Image

    os.makedirs(images_dir, exist_ok=True)
    items = []
    for name, image, label in demo_images(**kwargs):
        path = os.path.join(images_dir, name + ".png")
        if not os.path.exists(path):
            Image.fromarray(image).convert("RGB").save(path)
        items.append((path, label))
    return items


def load_demo_dataset(name=DEMO_DATASET_NAME, images_dir=None, persistent=True, overwrite=False):
    """Returns the demo FiftyOne dataset, creating it if needed (idempotent)."""
    import fiftyone as fo

    if fo.dataset_exists(name):
        if not overwrite:
            return fo.load_dataset(name)
        fo.delete_dataset(name)

    if images_dir is None:
        images_dir = os.path.join(fo.config.default_dataset_dir, name)
    items = write_demo_images(images_dir)

    dataset = fo.Dataset(name)
    dataset.persistent = persistent
    dataset.add_samples(
        [
            fo.Sample(filepath=path, ground_truth=fo.Classification(label=label))
            for path, label in items
        ]
    )
    dataset.compute_metadata()
    return dataset


CONTAMINATIONS = ("none", "far", "cauchy")


def contaminated_blobs(n=2000, d=32, k=5, contamination="none", fraction=0.1, spread=3.0,
                       outlier_scale=20.0, random_state=0):
    """Gaussian clusters, a ``fraction`` of whose points are contaminated.

    Cluster centers have N(0, spread^2) coordinates and members unit-variance
    Gaussian noise. ``contamination``: ``"none"``; ``"far"``: the contaminated
    points are replaced by far outliers with N(0, (outlier_scale * spread)^2)
    coordinates; ``"cauchy"``: they keep their cluster but get standard Cauchy
    noise instead of Gaussian.

    Returns:
        ``(X float32 (n, d), labels (n,), inlier mask (n,), centers (k, d))``
    """
    if contamination not in CONTAMINATIONS:
        raise ValueError(f"contamination must be one of {CONTAMINATIONS}; got {contamination!r}")
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1); got {fraction}")
    rng = np.random.default_rng(random_state)
    centers = rng.normal(size=(k, d)) * spread
    labels = rng.integers(0, k, n)
    X = centers[labels] + rng.normal(size=(n, d))
    inliers = np.ones(n, dtype=bool)
    if contamination != "none":
        bad = rng.choice(n, int(round(fraction * n)), replace=False)
        inliers[bad] = False
        if contamination == "far":
            X[bad] = rng.normal(size=(len(bad), d)) * (outlier_scale * spread)
        else:
            X[bad] = centers[labels[bad]] + rng.standard_cauchy(size=(len(bad), d))
    return X.astype(np.float32), labels, inliers, centers


def separated_blobs(sizes, d=4, std=2.0, min_separation=9.0, box=10.0, random_state=0):
    """Gaussian clusters of the given ``sizes`` (standard deviation ``std``)
    whose centers, uniform in [-box, box]^d, are at least ``min_separation``
    apart, so that no two clusters merge by chance.

    Returns:
        ``(X float32 (sum(sizes), d), labels)``, the clusters in order
    """
    rng = np.random.default_rng(random_state)
    centers, attempts = [], 0
    while len(centers) < len(sizes):
        attempts += 1
        if attempts > 10_000 * len(sizes):
            raise ValueError(f"cannot place {len(sizes)} centers {min_separation} apart in "
                             f"[-{box}, {box}]^{d}")
        c = rng.uniform(-box, box, d)
        if all(np.linalg.norm(c - other) >= min_separation for other in centers):
            centers.append(c)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    X = np.asarray(centers)[labels] + std * rng.normal(size=(len(labels), d))
    return X.astype(np.float32), labels
