"""Clustering runs in the database: the run records and the modules that
compute, write, read and change runs.

- :mod:`.records`: the records stored as FiftyOne runs (configs, results);
  their names are also this package's (``clustering.runs.ClusteringResults``,
  as runs stored by earlier versions name them), loaded on first use so that
  importing the package needs no FiftyOne;
- :mod:`.compute`: ``compute_clusters`` and run management (the SDK entry);
- :mod:`.writer`: the one writer of a run (claims, journal, ``check_run``);
- :mod:`.storage` (and :mod:`._bson_kernels`): reading and writing many
  values in bulk;
- :mod:`.model`: :class:`RunModel`, a run's features and clusters, the one
  assignment of samples to them;
- :mod:`.curation`, :mod:`.tree`, :mod:`.identity`: changing a run, cluster
  trees, cluster identity across runs;
- :mod:`.browse`, :mod:`.evaluation`: the read model (the panel's data,
  summaries) and judging runs.
"""


import importlib
import pkgutil

_SUBMODULES = {info.name for info in pkgutil.iter_modules(__path__)}


def __getattr__(name):
    # a submodule not imported yet is left to the import system
    if name.startswith("__") or name in _SUBMODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    records = importlib.import_module(f"{__name__}.records")
    try:
        return getattr(records, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
