"""Operators that curate a clustering run (thin wrappers over
:mod:`clustering.runs.curation`): name, merge and split clusters, assign new
samples, turn clusters into labels, tag a cluster's samples.

Each works from the App's operator browser (a form with a run picker and a
cluster dropdown showing names and sizes) and with parameters, from a panel
(``ctx.trigger("@imgclust/clustering/<name>", params)``) or the SDK
(``foo.get_operator(uri)(dataset, ...)``). Cluster ids may be given as ints
or as the strings the form's dropdowns hold; the library validates every
parameter and names the problem.
"""

import fiftyone.operators as foo
import fiftyone.operators.types as types

import clustering

from .common import Params, execute_from_sdk, run_key_input


def _config(name, label, description):
    # schema validation off: a panel passes ints where the form's dropdowns
    # hold strings; the library checks every value
    return foo.OperatorConfig(
        name=name,
        label=label,
        description=description,
        icon="/assets/icon.svg",
        dynamic=True,
        allow_immediate_execution=True,
        allow_delegated_execution=False,
        disable_schema_validation=True,
    )


def _results(ctx, inputs):
    """(run key, results) of the form's run picker, or (None, None)."""
    run_key = run_key_input(ctx, inputs)
    if run_key is None:
        return None, None
    return run_key, clustering.load_clustering_results(ctx.dataset, run_key)


def _cluster_label(results, c):
    name = (results.names or {}).get(str(c))
    return f"{c}{': ' + name if name else ''} ({int(results.cluster_sizes[c])} samples)"


def _cluster_choices(results):
    choices = types.DropdownView()
    for c in results.cluster_ids():
        choices.add_choice(str(c), label=_cluster_label(results, c))
    return choices


def _cluster_input(ctx, inputs, results, description=None):
    """A dropdown of the run's clusters; returns the chosen id or None."""
    choices = _cluster_choices(results)
    inputs.enum("cluster", choices.values(), required=True, label="Cluster", description=description, view=choices)
    value = Params(ctx.params, lenient=True).int("cluster", None)
    return value if value in results.cluster_ids() else None


def _message_output():
    outputs = types.Object()
    outputs.str("message", label="Done", view=types.MarkdownView())
    return types.Property(outputs)


class SetClusterName(foo.Operator):
    """Params: ``run_key``, ``cluster`` (int), ``name``, ``description``
    (optional). Returns ``{"names": {cluster id (str): name}, "message"}``."""

    @property
    def config(self):
        return _config("set_cluster_name", "Name a cluster", "Give a cluster of a clustering run a hand-written name")

    def __call__(self, sample_collection, run_key, cluster, name, description=None):
        params = dict(run_key=run_key, cluster=cluster, name=name, description=description)
        return execute_from_sdk(self, sample_collection, params).result

    def resolve_input(self, ctx):
        inputs = types.Object()
        run_key, results = _results(ctx, inputs)
        if results is not None:
            cluster = _cluster_input(ctx, inputs, results)
            current = (results.names or {}).get(str(cluster)) if cluster is not None else None
            inputs.str("name", default=current, required=True, label="Name")
            inputs.str(
                "description",
                default=(getattr(results, "descriptions", None) or {}).get(str(cluster)),
                label="Description (optional)",
            )
        return types.Property(inputs, view=types.View(label="Name a cluster"))

    def execute(self, ctx):
        p = Params(ctx.params)
        cluster = p.int("cluster")
        names = clustering.set_cluster_name(ctx.dataset, p.str("run_key"), cluster, p.str("name"), p.str("description", None))
        ctx.ops.reload_dataset()
        return {"names": names, "message": f"Cluster {cluster} is now **{names[str(cluster)]}**"}

    def resolve_output(self, ctx):
        return _message_output()


class MergeClusters(foo.Operator):
    """Params: ``run_key``, ``clusters`` (list of ints, two or more).
    Returns ``{"cluster": the merged cluster's id (the smallest), "message"}``."""

    @property
    def config(self):
        return _config("merge_clusters", "Merge clusters", "Merge clusters of a clustering run into the one with the smallest id")

    def __call__(self, sample_collection, run_key, clusters):
        return execute_from_sdk(self, sample_collection, dict(run_key=run_key, clusters=list(clusters))).result

    def resolve_input(self, ctx):
        inputs = types.Object()
        run_key, results = _results(ctx, inputs)
        if results is not None:
            choices = types.AutocompleteView(allow_user_input=False, allow_duplicates=False)
            for c in results.cluster_ids():
                choices.add_choice(str(c), label=_cluster_label(results, c))
            inputs.list(
                "clusters", types.String(), required=True, min_items=2, label="Clusters to merge",
                description="They become one cluster with the smallest id; its center is recomputed", view=choices,
            )
        return types.Property(inputs, view=types.View(label="Merge clusters"))

    def execute(self, ctx):
        p = Params(ctx.params)
        clusters = p.ints("clusters")
        target = clustering.merge_clusters(ctx.dataset, p.str("run_key"), clusters)
        ctx.ops.reload_dataset()
        merged = ", ".join(str(c) for c in sorted(set(clusters)))
        return {"cluster": target, "message": f"Merged clusters {merged} into cluster {target}"}

    def resolve_output(self, ctx):
        return _message_output()


class SplitCluster(foo.Operator):
    """Params: ``run_key``, ``cluster`` (int), ``k`` (int, default 2).
    Returns ``{"clusters": the new ids, "message"}``."""

    @property
    def config(self):
        return _config("split_cluster", "Split a cluster", "Re-cluster one cluster of a clustering run into k new clusters")

    def __call__(self, sample_collection, run_key, cluster, k=2):
        return execute_from_sdk(self, sample_collection, dict(run_key=run_key, cluster=cluster, k=k)).result

    def resolve_input(self, ctx):
        inputs = types.Object()
        run_key, results = _results(ctx, inputs)
        if results is not None:
            cluster = _cluster_input(ctx, inputs, results, description="Its members are re-clustered with the run's method, loss and features")
            size = int(results.cluster_sizes[cluster]) if cluster is not None else None
            prop = inputs.int("k", default=2, min=2, max=size, required=True, label="Number of new clusters (k)")
            k = Params(ctx.params, lenient=True).int("k", None)
            if size is not None and k is not None and k > size:
                prop.invalid = True
                prop.error_message = f"Cluster {cluster} has only {size} samples"
        return types.Property(inputs, view=types.View(label="Split a cluster"))

    def execute(self, ctx):
        p = Params(ctx.params)
        cluster = p.int("cluster")
        new = clustering.split_cluster(ctx.dataset, p.str("run_key"), cluster, p.int("k", 2))
        ctx.ops.reload_dataset()
        return {"clusters": new, "message": f"Split cluster {cluster} into clusters {', '.join(map(str, new))}"}

    def resolve_output(self, ctx):
        return _message_output()


class AssignNewSamples(foo.Operator):
    """Params: ``run_key``. Assigns the samples of the current view that
    have the run's features but no cluster to their nearest center.
    Returns ``{"num_assigned", "message"}``."""

    @property
    def config(self):
        return _config("assign_new_samples", "Assign new samples to clusters", "Give samples added after a clustering run the cluster of their nearest center")

    def __call__(self, sample_collection, run_key):
        return execute_from_sdk(self, sample_collection, dict(run_key=run_key)).result

    def resolve_input(self, ctx):
        inputs = types.Object()
        run_key, results = _results(ctx, inputs)
        if results is not None:
            field = results.config.embeddings_field
            view = ctx.target_view()
            if field and view.has_field(field) and not getattr(view, "_is_patches", False):
                n = view.exists(field).count() - view.select(list(results.sample_ids)).count()
                inputs.view("plan", types.Notice(label=f"{max(n, 0)} samples of the current view have '{field}' but no cluster"))
        return types.Property(inputs, view=types.View(label="Assign new samples to clusters"))

    def execute(self, ctx):
        n = clustering.assign_new_samples(ctx.target_view(), Params(ctx.params).str("run_key"))
        ctx.ops.reload_dataset()
        return {"num_assigned": n, "message": f"Assigned {n} samples"}

    def resolve_output(self, ctx):
        return _message_output()


class ClustersToLabels(foo.Operator):
    """Params: ``run_key``, ``label_field``, ``use_names`` (default True),
    ``overwrite`` (default False). Writes a Classification for each clustered
    sample of the current view. Returns ``{"label_field", "num_labels", "message"}``."""

    @property
    def config(self):
        return _config("clusters_to_labels", "Clusters to labels", "Write each clustered sample's cluster as a Classification (the start of an annotation pass)")

    def __call__(self, sample_collection, run_key, label_field, use_names=True, overwrite=False):
        params = dict(run_key=run_key, label_field=label_field, use_names=use_names, overwrite=overwrite)
        return execute_from_sdk(self, sample_collection, params).result

    def resolve_input(self, ctx):
        inputs = types.Object()
        run_key, results = _results(ctx, inputs)
        if results is not None:
            prop = inputs.str(
                "label_field", default=f"{run_key}_label", required=True, label="Label field",
                description="A new Classification field; it is yours: deleting the run keeps it",
            )
            inputs.bool("use_names", default=True, label="Use cluster names as labels", description="Otherwise cluster_<id>")
            inputs.bool("overwrite", default=False, label="Overwrite an existing Classification field")
            p = Params(ctx.params, lenient=True)
            field = p.str("label_field", f"{run_key}_label")
            if ctx.dataset.has_field(field) and not p.bool("overwrite"):
                prop.invalid = True
                prop.error_message = f"Field '{field}' exists; check overwrite or choose another name"
        return types.Property(inputs, view=types.View(label="Clusters to labels"))

    def execute(self, ctx):
        p = Params(ctx.params)
        field = p.str("label_field")
        n = clustering.to_labels(
            ctx.target_view(), p.str("run_key"), field, use_names=p.bool("use_names", True), overwrite=p.bool("overwrite")
        )
        ctx.ops.reload_dataset()
        return {"label_field": field, "num_labels": n, "message": f"Wrote {n} labels to `{field}`"}

    def resolve_output(self, ctx):
        return _message_output()


class TagCluster(foo.Operator):
    """Params: ``run_key``, ``cluster`` (int), ``tags`` (list of str),
    ``untag`` (default False: add the tags; True: remove them). Acts on the
    cluster's samples in the current view. Returns ``{"num_samples", "message"}``."""

    @property
    def config(self):
        return _config("tag_cluster", "Tag a cluster", "Add (or remove) sample tags on a cluster's samples")

    def __call__(self, sample_collection, run_key, cluster, tags, untag=False):
        params = dict(run_key=run_key, cluster=cluster, tags=[tags] if isinstance(tags, str) else list(tags), untag=untag)
        return execute_from_sdk(self, sample_collection, params).result

    def resolve_input(self, ctx):
        inputs = types.Object()
        run_key, results = _results(ctx, inputs)
        if results is not None:
            _cluster_input(ctx, inputs, results)
            choices = types.AutocompleteView(allow_user_input=True, allow_duplicates=False)
            for tag in ctx.dataset.distinct("tags"):
                choices.add_choice(tag, label=tag)
            inputs.list("tags", types.String(), required=True, min_items=1, label="Tags", view=choices)
            inputs.bool("untag", default=False, label="Remove these tags instead")
        return types.Property(inputs, view=types.View(label="Tag a cluster"))

    def execute(self, ctx):
        p = Params(ctx.params)
        cluster, untag = p.int("cluster"), p.bool("untag")
        edit = clustering.untag_cluster if untag else clustering.tag_cluster
        n = edit(ctx.target_view(), p.str("run_key"), cluster, p.strs("tags"))
        ctx.ops.reload_dataset()
        verb = "Untagged" if untag else "Tagged"
        return {"num_samples": n, "message": f"{verb} {n} samples of cluster {cluster}"}

    def resolve_output(self, ctx):
        return _message_output()


class Subcluster(foo.Operator):
    """Params: ``run_key``, ``cluster`` (int), ``k`` (int >= 2; empty: the k
    that ``choose_k`` recommends for the cluster). Returns ``{"run_key"``
    (the level below), ``"clusters"`` (the new sub-clusters), ``"parent"``,
    ``"message"}``."""

    @property
    def config(self):
        return _config("subcluster", "Sub-cluster a cluster", "Cluster one cluster's members into sub-clusters, one level down")

    def __call__(self, sample_collection, run_key, cluster, k=None):
        return execute_from_sdk(self, sample_collection, dict(run_key=run_key, cluster=cluster, k=k)).result

    def resolve_input(self, ctx):
        inputs = types.Object()
        run_key, results = _results(ctx, inputs)
        if results is not None:
            _cluster_input(ctx, inputs, results, description="Its members are clustered again with the run's method, loss and features")
            inputs.int(
                "k", min=2, label="Number of sub-clusters (optional)",
                description="Empty: the k that Choose k recommends for this cluster's members",
            )
        return types.Property(inputs, view=types.View(label="Sub-cluster a cluster"))

    def execute(self, ctx):
        p = Params(ctx.params)
        cluster = p.int("cluster")
        key, new = clustering.subcluster(ctx.dataset, p.str("run_key"), cluster, k=p.int("k", None, minimum=2))
        ctx.ops.reload_dataset()
        return {
            "run_key": key, "clusters": new, "parent": cluster,
            "message": f"Cluster {cluster} has {len(new)} sub-clusters in run `{key}`: {', '.join(map(str, new))}",
        }

    def resolve_output(self, ctx):
        return _message_output()
