"""Compiling the engine's CPU kernels (and the kernels that decode embeddings
read from the database) ahead of first use.

numba compiles the kernels a loss needs the first time a process fits with it
(a few seconds for squared L2, 12-13 s for absolute, Huber or pseudo-Huber)
and caches them on disk (``clustering/engine/__pycache__``, or numba's user cache
directory when that is read-only); later processes load them in under a
second. ``python -m clustering.warmup`` compiles every loss's float32 kernels
once, at install time (``make venv`` and ``make install-plugin`` run it).

Within a process the engine does the same on first use of a loss
(:mod:`clustering.engine.kernel_cache`).
"""

from .engine import _kernels as K
from .engine.kernel_cache import ensure_ready
from .engine.kmeans import compile_kernels
from .engine.losses import available_losses


def compile_all(losses=None, dtypes=("float32",), progress=None):
    """Compiles every loss's kernels (``losses``: names, default all) and those
    that decode embeddings read from the database."""
    from .runs import _bson_kernels

    todo = [(loss, dtype) for loss in (losses or available_losses()) for dtype in dtypes]
    for i, (loss, dtype) in enumerate(todo):
        if progress is not None:
            progress(i / (len(todo) + 1), f"{loss} ({dtype})")
        ensure_ready(loss, dtype, compile_kernels)
    if progress is not None:
        progress(len(todo) / (len(todo) + 1), "embeddings decoding")
    _bson_kernels.warm_up()
    if progress is not None:
        progress(1.0, "done")


def main(argv=None):
    import argparse
    import time

    parser = argparse.ArgumentParser(description="Compile the clustering engine's CPU kernels (numba) ahead of first use.")
    parser.add_argument("--loss", action="append", help="only this loss (repeatable); default: every loss")
    parser.add_argument("--float64", action="store_true", help="also the float64 kernels")
    args = parser.parse_args(argv)
    if not K.NUMBA_ENABLED:
        print("numba is not available (or CLUSTERING_DISABLE_NUMBA is set): nothing to compile")
        return
    dtypes = ("float32", "float64") if args.float64 else ("float32",)
    start = time.perf_counter()
    compile_all(args.loss, dtypes, progress=lambda f, m: print(f"[{100 * f:3.0f}%] {m}", flush=True))
    print(f"kernels ready in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
