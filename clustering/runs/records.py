"""The run records, stored as FiftyOne custom runs: a run's config
(:class:`ClusteringRunConfig`, and one subclass per built-in method) records
every parameter actually used (for a run on a patches view, ``patches_field``
and output fields that are label attributes such as
``ground_truth.detections.objs_cluster``); its results
(:class:`ClusteringResults`) hold centers, labels, losses, representatives,
names, stability and timings, with arrays stored as compact numpy bytes.
Deleting or renaming the run through FiftyOne (``dataset.delete_run`` /
``rename_run``) also deletes or renames its sample fields.

Runs stored before the subpackages name these classes
``clustering.runs.<Class>``: the package resolves those names to this module.
"""

import fiftyone.core.runs as fors
import fiftyone.core.utils as fou
import numpy as np

PLUGIN = "@imgclust/clustering"
FIELD_KEYS = ("label_field", "loss_field", "rep_field", "name_field", "path_field")


def default_fields(run_key):
    """Default output field names of a run."""
    return {
        "label_field": f"{run_key}_cluster",
        "loss_field": f"{run_key}_loss",
        "rep_field": f"{run_key}_rep",
    }


def output_path(dataset, patches_field, name):
    """Dataset path of output field ``name``: a sample field, or an attribute of
    the labels of ``patches_field`` for a run on patches."""
    return dataset._get_label_field_path(patches_field, name)[1] if patches_field else name


def view_path(config, key):
    """Path of the run's ``key`` field (e.g. ``"label_field"``) in the view the run
    was computed on (``<patches_field>.<name>`` in a patches view)."""
    name = getattr(config, key)
    patches_field = config.patches_field
    return f"{patches_field}.{name.rpartition('.')[2]}" if patches_field else name


def renamed_path(path, key, new_key):
    """``path`` with its ``{key}_`` name prefix changed to ``{new_key}_``, or None."""
    parent, dot, name = path.rpartition(".")
    if not name.startswith(key + "_"):
        return None
    return parent + dot + new_key + name[len(key) :]


def require_sample_run(config, run_key, action):
    """Refuses ``action`` on a run over patches, with a clear error."""
    if config.patches_field:
        raise ValueError(
            f"Run '{run_key}' clusters patches of '{config.patches_field}'; {action} "
            "supports runs on images only"
        )


class ClusteringRunConfig(fors.RunConfig):
    """Config of a clustering run: what every run records (:attr:`common`,
    with defaults, so that a run stored by an earlier version has every
    attribute) and the method's own parameters. Each built-in method has its
    subclass (:func:`config_class`) whose defaults are the method's."""

    #: what every run records: its method, how its features were made, how
    #: it was fitted, what it clustered, its fields and its state
    common = {
        "plugin": PLUGIN,
        "status": "completed",
        "k": None,
        "k_requested": None,
        "source": None,
        "embeddings_field": None,
        "model": None,
        "patches_field": None,
        "normalize": False,
        "reduction": "none",
        "n_components": None,
        "input_dim": None,
        "dim": None,
        "fit_sample_size": "auto",
        "num_fit": None,
        "streamed": False,
        "num_samples": None,
        "num_clustered": None,
        "num_missing_embeddings": None,
        "num_representatives": 5,
        "label_field": None,
        "loss_field": None,
        "rep_field": None,
        "name_field": None,
        "evaluated_gt_field": None,
        # a level of a cluster tree (clustering.runs.tree): the run one level up,
        # the tree's top run, this level (1 = top) and its path field
        "parent_run": None,
        "root_run": None,
        "level": 1,
        "path_field": None,
        # the loss the run's clusters are centered under (squared for scikit-learn methods)
        "loss": None,
        "loss_param": None,
    }
    #: the method's own parameters and their defaults
    method_defaults = {}

    def __init__(self, **kwargs):
        for name, default in {**self.common, **self.method_defaults}.items():
            kwargs.setdefault(name, default)
        super().__init__(**kwargs)


class ClusteringRun(fors.Run):
    """Run backend: knows its fields, so FiftyOne's delete/rename keep them in sync."""

    @classmethod
    def config_cls(cls):
        return ClusteringRunConfig

    def get_fields(self, samples, key):
        return [
            getattr(self.config, k)
            for k in FIELD_KEYS
            if getattr(self.config, k, None)
        ]

    def cleanup(self, samples, key):
        dataset = samples._root_dataset
        existing = [f for f in self.get_fields(samples, key) if dataset.has_field(f)]
        if existing:
            dataset.delete_sample_fields(existing)

    def rename(self, samples, key, new_key):
        dataset = samples._root_dataset
        renames = {}
        for k in FIELD_KEYS:
            name = getattr(self.config, k, None)
            target = name and renamed_path(name, key, new_key)
            if not target:
                continue
            if dataset.has_field(name):
                renames[name] = target
            if dataset.has_field(name) or dataset.has_field(target):  # (renamed before an interruption)
                setattr(self.config, k, target)
        conflicts = [n for n in renames.values() if dataset.has_field(n)]
        if conflicts:
            raise ValueError(f"Cannot rename: fields {conflicts} already exist")
        if renames:
            dataset.rename_sample_fields(renames)
        self.update_run_config(samples, key, self.config)
        cached = getattr(dataset, self._results_cache_field()).get(key)
        if cached is not None:  # FiftyOne moves cached results to the new key
            cached._config = self.config


def _method_classes(method):
    """The config and run classes of a built-in method (FiftyOne finds a run's
    class from its config's class name: ``<Name>Config`` -> ``<Name>``)."""
    name = "".join(part.capitalize() for part in method.name.split("_")) + "ClusteringRun"
    config = type(f"{name}Config", (ClusteringRunConfig,), {
        "__module__": __name__, "method_defaults": dict(method.defaults),
        "__doc__": f"Config of a {method.label} run: the common attributes and the method's parameters.",
    })
    run = type(name, (ClusteringRun,), {
        "__module__": __name__, "config_cls": classmethod(lambda cls: config),
        "__doc__": f"A {method.label} run.",
    })
    return config, run


def _builtin_configs():
    from ..engine.methods import available_methods, get_method

    configs = {}
    for name in available_methods():
        config, run = _method_classes(get_method(name))
        globals()[config.__name__], globals()[run.__name__] = config, run
        configs[name] = config
    return configs


_CONFIGS = _builtin_configs()


def config_class(method):
    """The config class of a run of ``method`` (a name): its built-in method's
    (:class:`GeneralizedKmeansClusteringRunConfig`, ...), else the base class."""
    return _CONFIGS.get(method, ClusteringRunConfig)


_ARRAYS = (
    "labels", "centers", "sample_losses", "cluster_sizes", "objective_history", "pca_mean", "pca_components",
    "umap_fit_coords",
)


class ClusteringResults(fors.RunResults):
    """Results of a clustering run.

    Attributes: ``sample_ids`` (clustered samples, in order), ``labels``,
    ``sample_losses``, ``centers`` (k, d in the clustered feature space),
    ``cluster_sizes``, ``objective``, ``objective_history``,
    ``representatives`` ({cluster id (str): [sample ids, best first]}),
    ``timings`` (seconds per stage), ``names`` ({cluster id (str): name}),
    ``pca_mean`` and ``pca_components`` (a PCA reduction, to map new samples;
    None otherwise), ``umap_fit_ids`` and ``umap_fit_coords`` (a UMAP
    reduction: the rows it was fitted on and their coordinates), and after curation (:mod:`clustering.runs.curation`)
    ``edits`` (the actions applied, oldest first). ``centers`` and
    ``cluster_sizes`` are indexed by cluster id: an id retired by a merge or a
    split keeps a NaN center row and size 0.
    """

    def serialize(self, reflective=False):
        d = {"cls": self.cls}
        for name, value in vars(self).items():
            if name.startswith("_"):
                continue
            if name in _ARRAYS and value is not None:
                value = fou.serialize_numpy_array(np.asarray(value), ascii=True)
            d[name] = value
        return d

    @classmethod
    def _from_dict(cls, d, samples, config, key):
        d = dict(d)
        for name in _ARRAYS:
            if isinstance(d.get(name), str):
                d[name] = fou.deserialize_numpy_array(d[name], ascii=True)
        return cls(samples, config, key, **d)

    def cluster_ids(self):
        """Sorted cluster ids, noise (-1) excluded."""
        return sorted(int(c) for c in np.unique(self.labels) if c >= 0)



def list_clustering_runs(samples, method=None):
    """Keys of this plugin's clustering runs on ``samples``."""
    kwargs = {"method": method} if method else {}
    return samples.list_runs(type=ClusteringRun, **kwargs)


def child_runs(samples, run_key):
    """The keys of the levels of a cluster tree directly below run ``run_key``."""
    dataset = samples._root_dataset
    return [k for k in list_clustering_runs(dataset) if dataset.get_run_info(k).config.parent_run == run_key]


def run_document(dataset, run_key):
    """The run's document as stored now (``config`` and ``results``, the id of
    its results file), or None."""
    import fiftyone.core.odm as foo

    return foo.get_db_conn().runs.find_one(
        {"_dataset_id": dataset._doc.id, "key": run_key}, {"config": 1, "results": 1}
    )


def refresh(dataset):
    """Reloads the dataset's document (its runs and schema) when another
    process changed it since this process loaded it."""
    import fiftyone.core.odm as foo

    stored = foo.get_db_conn().datasets.find_one({"_id": dataset._doc.id}, {"last_modified_at": 1}) or {}
    mine, theirs = dataset._doc.last_modified_at, stored.get("last_modified_at")
    if mine is None or theirs is None or abs((mine - theirs).total_seconds()) >= 1e-3:
        dataset._reload(hard=True)


def get_clustering_run_config(samples, run_key):
    """The run's config as stored now, with a clear error when the key is not
    a clustering run. The dataset's run documents are reloaded first when
    another process added, changed or removed the run."""
    dataset = samples._root_dataset
    doc = run_document(dataset, run_key)
    known = dataset._doc.runs.get(run_key)
    if (doc is None) != (known is None) or (doc is not None and getattr(known, "config", None) != doc["config"]):
        refresh(dataset)
    if run_key not in dataset.list_runs():
        raise ValueError(
            f"No run with key '{run_key}' on dataset '{dataset.name}'; "
            f"clustering runs: {list_clustering_runs(dataset)}"
        )
    config = dataset.get_run_info(run_key).config
    if getattr(config, "plugin", None) != PLUGIN:
        raise ValueError(f"Run '{run_key}' is not a clustering run of {PLUGIN}")
    return config
