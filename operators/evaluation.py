"""Evaluation and visualization operators: ``choose_k``, ``evaluate_run``,
``compare_runs``, ``plot_silhouette``, ``visualize_run`` and ``run_summary``.

Thin wrappers over :mod:`clustering.runs.evaluation`; figures come from
:mod:`clustering.plots`. Called from the SDK (``__call__``) or delegated, an
operator returns the plain result dict; in the App it shows the results
(Plotly charts, tables, thumbnails) with ``show_output``.
"""

import fiftyone.operators as foo
import fiftyone.operators.types as types

import clustering
from clustering.runs import evaluation as ce
from clustering import plots
from clustering.engine.methods import available_methods, get_method

from .common import (
    Params,
    fmt,
    method_inputs,
    preprocessing_inputs,
    add_delegate_input,
    add_plot,
    execute_from_sdk,
    progress_callback,
    run_key_input,
    run_keys,
    run_with_progress,
    show_output,
    vector_fields,
)

_SDK_FLAG = "_sdk_call"  # set by __call__: return the result instead of App messages
MAX_KNIFE_VALUES = 1000  # silhouettes drawn per cluster in the App (evenly spaced in sorted order)


def _call(operator, samples, params, delegate=False):
    result = execute_from_sdk(operator, samples, dict(params, **{_SDK_FLAG: True}), delegate=delegate)
    return result if delegate else result.result


def _execute(ctx, label, work, render, progress=False):
    """SDK / delegated: run ``work`` and return its dict. App: a generator that
    runs it (with the progress bar if ``progress``) and yields ``render(result)``."""
    if ctx.params.get(_SDK_FLAG) or ctx.delegated:
        return work(progress_callback(ctx, label) if ctx.delegated and progress else None)
    return _app(ctx, label, work, render, progress)


def _app(ctx, label, work, render, progress):
    if progress:
        result = yield from run_with_progress(ctx, label, work)
    else:
        result = work(None)
    for op in render(ctx, result):
        yield op


def _config(name, label, description, delegatable=False):
    return foo.OperatorConfig(
        name=name,
        label=label,
        description=description,
        icon="/assets/icon.svg",
        dynamic=True,
        execute_as_generator=True,
        allow_immediate_execution=True,
        allow_delegated_execution=delegatable,
    )


def _table(columns):
    table = types.TableView()
    for key, label in columns:
        table.add_column(key, label=label)
    return table


def _gt_input(ctx, inputs, required, default="ground_truth"):
    fields = ce.gt_fields(ctx.dataset)
    if not fields:
        if required:
            inputs.view("no_gt", types.Error(label="No ground-truth field", description="Needs a Classification or string field"))
        return None
    choices = types.DropdownView()
    for f in fields:
        choices.add_choice(f, label=f)
    default = default if default in fields else (None if not required else fields[0])
    inputs.enum(
        "gt_field", choices.values(), default=default, required=required,
        label="Ground-truth field" + ("" if required else " (optional)"),
        description="A Classification field or a string field", view=choices,
    )
    return ctx.params.get("gt_field") or default


# ---------------------------------------------------------------------------


class ChooseK(foo.Operator):
    @property
    def config(self):
        return _config("choose_k", "Choose k (six criteria)", "Sweep the number of clusters, score each k by six criteria and recommend one", delegatable=True)

    def __call__(self, sample_collection, embeddings, delegate=False, **params):
        """SDK entry: same parameters as :func:`clustering.choose_k`; returns its dict."""
        if not isinstance(embeddings, str):
            raise ValueError("The operator takes an embeddings field name; pass arrays to clustering.choose_k")
        return _call(self, sample_collection, dict(params, embeddings=embeddings), delegate)

    def resolve_input(self, ctx):
        inputs = types.Object()
        fields = vector_fields(ctx.dataset)
        if not fields:
            inputs.view("no_fields", types.Error(label="No embeddings field", description="Compute embeddings first (compute_embeddings)"))
            return types.Property(inputs)
        inputs.enum("embeddings", fields, default=fields[0], required=True, label="Embeddings field", view=types.DropdownView())
        inputs.view_target(ctx, action_description="Cluster")
        methods = types.DropdownView()
        for name in available_methods():
            if get_method(name).needs_k:
                methods.add_choice(name, label=get_method(name).label)
        inputs.enum("method", methods.values(), default="generalized_kmeans", label="Method", view=methods)
        method = get_method(ctx.params.get("method") or "generalized_kmeans")
        # the loss and its parameter (chosen once at k_min for the whole sweep)
        method_inputs(
            ctx, inputs, method, only=("loss", "loss_param"),
            loss_param_help="Empty: data-driven value chosen at k_min and kept for every k, so objectives are comparable",
        )
        inputs.int("k_min", default=2, min=1, required=True, label="Smallest k")
        kmax = inputs.int("k_max", default=10, min=3, required=True, label="Largest k")
        form = Params(ctx.params, lenient=True)
        k_min, k_max = form.int("k_min", 2), form.int("k_max", 10)
        if k_max < k_min + 2:
            kmax.invalid = True
            kmax.error_message = "Sweep at least 3 values of k"
        preprocessing_inputs(ctx, inputs, default="none")
        inputs.int(
            "sample_size", default=ce.DEFAULT_SAMPLE_SIZE, min=10, label="Silhouette sample size",
            description="Points scored (each against all points); exact when the dataset is smaller",
        )
        inputs.int("n_init", default=method.defaults.get("n_init", 1), min=1, label="Restarts per k")
        inputs.int("random_state", default=51, label="Seed")
        add_delegate_input(inputs)
        return types.Property(inputs, view=types.View(label="Choose k"))

    def resolve_delegation(self, ctx):
        return ctx.params.get("delegate", False)

    def execute(self, ctx):
        p = ctx.params
        method = get_method(p.get("method") or "generalized_kmeans")
        kwargs = {
            n: p[n]
            for n in ("embeddings", "method", "k_min", "k_max", "normalize", "reduction", "n_components", "sample_size", "random_state", "n_init", "max_iter", "loss", "loss_param")
            if p.get(n) not in (None, "")
        }
        if method.name != "generalized_kmeans":
            kwargs.pop("loss", None), kwargs.pop("loss_param", None)
        if kwargs.get("reduction", "none") == "none":
            kwargs.pop("n_components", None)
        for name in ("n_init", "max_iter"):
            if name not in method.defaults:
                kwargs.pop(name, None)
        samples = ctx.target_view()
        return _execute(ctx, "Choosing k", lambda progress: clustering.choose_k(samples, progress=progress, **kwargs), _render_choose_k, progress=True)


def _render_choose_k(ctx, r):
    outputs = types.Object()
    outputs.str("recommendation", label="Recommendation", view=types.MarkdownView())
    values = {}
    for name, label, figure in (
        ("criteria", "Which criteria agree", plots.criteria_figure),
        ("elbow", "Elbow", plots.elbow_figure),
        ("silhouette", "Silhouette", plots.silhouette_vs_k_figure),
        ("davies_bouldin", "Davies-Bouldin", plots.davies_bouldin_figure),
        ("calinski_harabasz", "Calinski-Harabasz", plots.calinski_harabasz_figure),
        ("stability", "Stability", plots.stability_figure),
        ("gap", "Gap statistic", plots.gap_figure),
    ):
        values[name] = add_plot(outputs, name, label, figure(r))
    columns = [("k", "k"), ("objective", "objective"), ("silhouette", "silhouette"), ("davies_bouldin", "Davies-Bouldin"),
               ("calinski_harabasz", "Calinski-Harabasz"), ("stability", "stability"), ("gap", "gap"), ("sizes", "cluster sizes")]
    outputs.list("per_k", types.Object(), label="Per k", view=_table(columns))
    rows = [
        {
            "k": row["k"],
            "objective": fmt(row["objective"], ".5g"),
            "silhouette": fmt(row["silhouette"]),
            "davies_bouldin": fmt(row["davies_bouldin"]),
            "calinski_harabasz": fmt(row["calinski_harabasz"], ".4g"),
            "stability": fmt(row["stability"]),
            "gap": fmt(row["gap"]) + ("" if row["gap_se"] is None else f" ± {row['gap_se']:.3f}"),
            "sizes": " ".join(str(s) for s in row["cluster_sizes"]),
        }
        for row in r["per_k"]
    ]
    loss = f", loss {r['loss']}" + (f" ({r['loss_param']:.4g})" if r.get("loss_param") else "") if r.get("loss") else ""
    sil = (
        "exact silhouette" if r["silhouette_exact"]
        else f"silhouette of {r['silhouette_sample_size']} random points, each against all {r['num_samples']}"
    )
    text = (
        f"#### Recommended k = {r['recommended_k']}\n\n{r['reason']}\n\n"
        f"{r['num_samples']} samples of `{r['embeddings_field']}` ({r['method']}{loss}); {sil} ({r['silhouette_metric']}). "
        f"Run `compute_clusters` with k={r['recommended_k']} to keep it."
    )
    yield show_output(ctx, outputs, dict(values, recommendation=text, per_k=rows))


# ---------------------------------------------------------------------------


class EvaluateRun(foo.Operator):
    @property
    def config(self):
        return _config("evaluate_run", "Evaluate clustering vs ground truth", "NMI, ARI, accuracy and purity of a run against ground-truth classes")

    def __call__(self, sample_collection, run_key, gt_field="ground_truth"):
        """SDK entry: returns :func:`clustering.evaluate_run`'s dict."""
        return _call(self, sample_collection, {"run_key": run_key, "gt_field": gt_field})

    def resolve_input(self, ctx):
        inputs = types.Object()
        if run_key_input(ctx, inputs) is None:
            return types.Property(inputs)
        _gt_input(ctx, inputs, required=True)
        inputs.view_target(ctx, action_description="Evaluate")
        return types.Property(inputs, view=types.View(label="Evaluate clustering"))

    def execute(self, ctx):
        samples = ctx.target_view()
        p = Params(ctx.params)
        run_key, gt_field = p.str("run_key"), p.str("gt_field")
        return _execute(ctx, "Evaluating", lambda _: clustering.evaluate_run(samples, run_key, gt_field=gt_field), _render_evaluation)


def _render_evaluation(ctx, r):
    outputs = types.Object()
    outputs.str("metrics", label="Metrics", view=types.MarkdownView())
    purity = add_plot(outputs, "purity_plot", "Purity", plots.purity_figure(r))
    outputs.list(
        "per_cluster", types.Object(), label="Per cluster",
        view=_table([("cluster", "cluster"), ("name", "name"), ("size", "size"), ("majority_class", "majority class"), ("purity", "purity"), ("matched_class", "matched class")]),
    )
    heat = add_plot(outputs, "contingency", "Clusters x classes", plots.heatmap_figure(r["contingency"], f"Run '{r['run_key']}' vs '{r['gt_field']}'", "class", "cluster"))
    text = (
        f"**NMI** {r['nmi']:.3f} · **ARI** {r['ari']:.3f} · **accuracy** {r['accuracy']:.3f} "
        f"(Hungarian matching) · **purity** {r['purity']:.3f}\n\n"
        f"{r['num_clusters']} clusters vs {r['num_classes']} classes of `{r['gt_field']}`. {r['note']}."
    )
    rows = [
        dict(c, purity=f"{c['purity']:.3f}", name=c.get("name") or "", matched_class="" if c["matched_class"] is None else str(c["matched_class"]), majority_class=str(c["majority_class"]))
        for c in r["per_cluster"]
    ]
    yield show_output(ctx, outputs, {
        "metrics": text,
        "purity_plot": purity,
        "per_cluster": rows,
        "contingency": heat,
    })


# ---------------------------------------------------------------------------


class CompareRuns(foo.Operator):
    @property
    def config(self):
        return _config("compare_runs", "Compare clustering runs", "ARI, NMI, contingency table and the samples that changed cluster")

    def __call__(self, sample_collection, run_key_a, run_key_b):
        """SDK entry: returns :func:`clustering.compare_runs`'s dict (with ``changed_ids``)."""
        return _call(self, sample_collection, {"run_key_a": run_key_a, "run_key_b": run_key_b})

    def resolve_input(self, ctx):
        inputs = types.Object()
        keys = run_keys(ctx.dataset)
        if len(keys) < 2:
            inputs.view("few_runs", types.Warning(label="Needs two clustering runs", description="Run compute_clusters twice (e.g. with two losses)"))
            return types.Property(inputs)
        a = run_key_input(ctx, inputs, "run_key_a", "Run A", default=keys[-2])
        b_default = keys[-1] if keys[-1] != a else keys[-2]
        b = run_key_input(ctx, inputs, "run_key_b", "Run B", default=b_default)
        if a == b:
            inputs.view("same", types.Warning(label="Choose two different runs"))
        inputs.view_target(ctx, action_description="Compare")
        inputs.bool("show_changed", default=True, label="Show the samples that changed cluster", description="After optimally matching A's clusters to B's")
        return types.Property(inputs, view=types.View(label="Compare clustering runs"))

    def execute(self, ctx):
        samples = ctx.target_view()
        p = Params(ctx.params)
        a, b = p.str("run_key_a"), p.str("run_key_b")
        return _execute(ctx, "Comparing", lambda _: clustering.compare_runs(samples, a, b), _render_comparison)


def _render_comparison(ctx, r):
    outputs = types.Object()
    outputs.str("metrics", label="Agreement", view=types.MarkdownView())
    heat = add_plot(outputs, "contingency", "Contingency table", plots.heatmap_figure(r["contingency"], f"'{r['run_key_a']}' (rows) vs '{r['run_key_b']}' (columns)", r["run_key_b"], r["run_key_a"]))
    mapping = ", ".join(f"{k}→{v}" for k, v in r["mapping"].items())
    text = (
        f"**ARI** {r['ari']:.3f} · **NMI** {r['nmi']:.3f} · **{r['num_changed']}** of {r['num_compared']} "
        f"samples changed cluster ({100 * (1 - r['agreement']):.1f}%) after matching clusters "
        f"of '{r['run_key_a']}' to '{r['run_key_b']}' ({mapping})."
    )
    extra = [f"{v} {what}" for v, what in ((r["num_only_a"], f"only in '{r['run_key_a']}'"), (r["num_only_b"], f"only in '{r['run_key_b']}'"), (r["num_noise"], "noise in either run")) if v]
    if extra:
        text += " Not compared: " + ", ".join(extra) + "."
    if ctx.params.get("show_changed", True) and r["changed_ids"]:
        from clustering.runs import get_clustering_run_config

        label_a = get_clustering_run_config(ctx.dataset, r["run_key_a"]).label_field
        label_b = get_clustering_run_config(ctx.dataset, r["run_key_b"]).label_field
        yield ctx.ops.set_view(ctx.dataset.select(r["changed_ids"]).sort_by([(label_a, 1), (label_b, 1)]))
        text += f" The grid now shows them, sorted by `{label_a}` then `{label_b}`."
    yield show_output(ctx, outputs, {
        "metrics": text,
        "contingency": heat,
    })


# ---------------------------------------------------------------------------


class PlotSilhouette(foo.Operator):
    @property
    def config(self):
        return _config("plot_silhouette", "Silhouette plot of a run", "Per-cluster silhouette coefficients of a clustering run")

    def __call__(self, sample_collection, run_key, sample_size=None, metric=None):
        """SDK entry: returns :func:`clustering.plot_silhouette`'s dict (with ``figure``)."""
        return _call(self, sample_collection, {"run_key": run_key, "sample_size": sample_size, "metric": metric})

    def resolve_input(self, ctx):
        inputs = types.Object()
        if run_key_input(ctx, inputs) is None:
            return types.Property(inputs)
        inputs.int("sample_size", default=ce.DEFAULT_SAMPLE_SIZE, min=10, label="Points scored", description="Stratified by cluster; each point is scored against all points")
        metrics = types.RadioGroup(orientation="horizontal")
        for m in ("auto", "euclidean", "cosine"):
            metrics.add_choice(m, label=m)
        inputs.view_target(ctx, action_description="Score")
        inputs.enum("metric", metrics.values(), default="auto", label="Distance", description="auto: cosine for the cosine loss, else euclidean", view=metrics)
        return types.Property(inputs, view=types.View(label="Silhouette plot"))

    def execute(self, ctx):
        samples = ctx.target_view()
        p = Params(ctx.params)
        kwargs = {"sample_size": p.int("sample_size", ce.DEFAULT_SAMPLE_SIZE, minimum=2), "max_values": MAX_KNIFE_VALUES}
        if p.str("metric", "auto") != "auto":
            kwargs["metric"] = p.str("metric")
        run_key = p.str("run_key")
        return _execute(ctx, "Silhouette", lambda _: clustering.plot_silhouette(samples, run_key, **kwargs), _render_silhouette)


def _render_silhouette(ctx, r):
    outputs = types.Object()
    outputs.str("summary", label="Silhouette", view=types.MarkdownView())
    knife = add_plot(outputs, "figure", "Per-cluster silhouette", r["figure"])
    outputs.list(
        "clusters", types.Object(), label="Per cluster",
        view=_table([("cluster", "cluster"), ("name", "name"), ("size", "size"), ("num_points", "points scored from"), ("mean", "mean"), ("min", "min"), ("num_negative", "negative (scored)")]),
    )
    below = r["below_average"]
    text = (
        f"**Mean silhouette {r['silhouette']:.3f}**; {100 * r['negative_fraction']:.1f}% of points have a "
        f"negative silhouette (closer to another cluster). "
        f"{len(below)} of {len(r['clusters'])} clusters are below the mean"
        + (f" ({', '.join(map(str, below))})" if below else "")
        + f". {r['note']}."
    )
    rows = [
        {"cluster": c["cluster"], "name": c.get("name") or "", "size": c["size"], "num_points": c["num_points"], "mean": f"{c['mean']:.3f}", "min": f"{c['min']:.3f}", "num_negative": c["num_negative"]}
        for c in r["clusters"]
    ]
    yield show_output(ctx, outputs, {"summary": text, "figure": knife, "clusters": rows})


# ---------------------------------------------------------------------------


class VisualizeRun(foo.Operator):
    @property
    def config(self):
        return _config("visualize_run", "Map clusters in 2-d (UMAP / t-SNE / PCA)", "Brain visualization of a run's features, colored by cluster in the Embeddings panel", delegatable=True)

    def __call__(self, sample_collection, run_key, method="umap", brain_key=None, features="embeddings", overwrite=False, delegate=False):
        """SDK entry: returns :func:`clustering.visualize_run`'s dict."""
        params = dict(run_key=run_key, method=method, brain_key=brain_key, features=features, overwrite=overwrite)
        return _call(self, sample_collection, params, delegate)

    def resolve_input(self, ctx):
        inputs = types.Object()
        run_key = run_key_input(ctx, inputs)
        if run_key is None:
            return types.Property(inputs)
        config = clustering.runs.get_clustering_run_config(ctx.dataset, run_key)
        if not config.embeddings_field:
            inputs.view("no_field", types.Error(
                label="Run computed from an array",
                description="This run was clustered on an embeddings array passed in Python, not a field: there is nothing to map. Store the array in a vector field and recompute the run.",
            ))
            return types.Property(inputs)
        methods = types.RadioGroup(orientation="horizontal")
        for m, label in (("umap", "UMAP"), ("tsne", "t-SNE"), ("pca", "PCA")):
            methods.add_choice(m, label=label)
        inputs.enum("method", methods.values(), default="umap", label="Method", view=methods)
        method = ctx.params.get("method") or "umap"
        feats = types.RadioGroup()
        feats.add_choice("embeddings", label=f"Embeddings field '{config.embeddings_field}'", description="Linked to the field (the panel can add new samples later)")
        feats.add_choice("run", label="The run's features", description="After the run's normalization / reduction, exactly what was clustered")
        inputs.enum("features", feats.values(), default="embeddings", label="Map", view=feats)
        inputs.view_target(ctx, action_description="Map")
        prop = inputs.str("brain_key", default=f"{run_key}_{method}", label="Brain key", description=f"Default: {run_key}_{method}")
        brain_key = ctx.params.get("brain_key") or f"{run_key}_{method}"
        exists = brain_key in ctx.dataset.list_brain_runs()
        inputs.bool("overwrite", default=False, label="Overwrite an existing brain run with this key")
        if not brain_key.isidentifier():
            prop.invalid, prop.error_message = True, "Use a Python identifier"
        elif exists and not ctx.params.get("overwrite", False):
            prop.invalid, prop.error_message = True, f"Brain key '{brain_key}' exists; choose another or check 'Overwrite'"
        add_delegate_input(inputs)
        return types.Property(inputs, view=types.View(label="Map clusters in 2-d"))

    def resolve_delegation(self, ctx):
        return ctx.params.get("delegate", False)

    def execute(self, ctx):
        samples = ctx.target_view()
        kwargs = {n: ctx.params[n] for n in ("method", "brain_key", "features", "overwrite") if ctx.params.get(n) not in (None, "")}
        run_key = Params(ctx.params).str("run_key")
        if ctx.params.get(_SDK_FLAG) or ctx.delegated:
            return _execute(ctx, "Mapping", lambda p: clustering.visualize_run(samples, run_key, progress=p, **kwargs), None, progress=True)
        return _app(ctx, "Mapping", lambda p: ce.run_visualization(samples, run_key, progress=p, **kwargs), _render_visualization, True)


def _render_visualization(ctx, out):
    r, results = out
    import numpy as np

    from clustering.runs import get_clustering_run_config

    config = get_clustering_run_config(ctx.dataset, r["run_key"])
    ids = list(results.sample_ids)
    by_id = dict(zip(*ctx.dataset.values(["id", config.label_field])))
    labels = np.array([-1 if by_id.get(i) is None else by_id[i] for i in ids])
    names = getattr(clustering.load_clustering_results(ctx.dataset, r["run_key"]), "names", None) or {}
    outputs = types.Object()
    outputs.str("how_to", label="Open it", view=types.MarkdownView())
    preview = add_plot(outputs, "preview", "Preview", plots.scatter_figure(np.asarray(results.points)[:, :2], labels, f"{r['method'].upper()} of run '{r['run_key']}', colored by cluster", names=names))
    text = f"**{r['method'].upper()}** map of {r['num_points']} samples saved as brain key `{r['brain_key']}` ({r['note']}).\n\n{r['how_to']}."
    if "explained_variance_ratio" in r:
        text += " Per component: " + ", ".join(f"{100 * v:.1f}%" for v in r["explained_variance_ratio"]) + "."
    yield ctx.ops.reload_dataset()
    yield show_output(ctx, outputs, {
        "how_to": text,
        "preview": preview,
    })


# ---------------------------------------------------------------------------


class RunSummary(foo.Operator):
    @property
    def config(self):
        return _config("run_summary", "Clustering run summary", "Sizes, names, representative thumbnails and metrics of a run")

    def __call__(self, sample_collection, run_key, gt_field=None, silhouette=False, num_thumbnails=3):
        """SDK entry: returns :func:`clustering.run_summary`'s dict."""
        params = dict(run_key=run_key, gt_field=gt_field, silhouette=silhouette, num_thumbnails=num_thumbnails)
        return _call(self, sample_collection, params)

    def resolve_input(self, ctx):
        inputs = types.Object()
        if run_key_input(ctx, inputs) is None:
            return types.Property(inputs)
        _gt_input(ctx, inputs, required=False)
        inputs.view_target(ctx, action_description="Summarize")
        inputs.bool("silhouette", default=False, label="Compute silhouettes (sampled)")
        inputs.int("num_thumbnails", default=3, min=1, max=10, label="Thumbnails per cluster")
        inputs.bool("show_representatives", default=False, label="Show every cluster's representatives in the grid")
        return types.Property(inputs, view=types.View(label="Clustering run summary"))

    def execute(self, ctx):
        samples = ctx.target_view()
        p = Params(ctx.params)
        run_key = p.str("run_key")
        kwargs = {
            "gt_field": p.str("gt_field", None),
            "silhouette": p.bool("silhouette"),
            "num_thumbnails": p.int("num_thumbnails", 3, minimum=0),
        }
        return _execute(ctx, "Summary", lambda _: clustering.run_summary(samples, run_key, **kwargs), _render_summary)


def _render_summary(ctx, r):
    m = r["metrics"]
    cfg = r["config"]
    head = (
        f"#### Run `{r['run_key']}`: {m['num_clusters']} clusters of {m['num_clustered']} samples\n\n"
        f"{cfg.get('method')}" + (f", loss {cfg['loss']}" if cfg.get("loss") else "")
        + (f" ({cfg['loss_param']:.4g})" if cfg.get("loss_param") else "")
        + f", embeddings `{cfg.get('embeddings_field') or 'array'}`; objective {fmt(m['objective'], '.5g')}; "
        f"sizes {m['smallest_cluster']}–{m['largest_cluster']}"
        + (f"; {m['num_noise']} noise" if m["num_noise"] else "")
    )
    if "silhouette" in m:
        head += f"; mean silhouette {m['silhouette']:.3f}"
    if "nmi" in m:
        head += (
            f"\n\nvs `{m['gt_field']}`: NMI {m['nmi']:.3f}, ARI {m['ari']:.3f}, accuracy {m['accuracy']:.3f}, "
            f"purity {m['purity']:.3f} ({m['num_evaluated']:,} samples with ground truth evaluated)"
        )
    head += f"\n\n**Galleries:** {r['galleries']}"
    outputs = types.Object()
    outputs.str("header", label="Summary", view=types.MarkdownView())
    values = {"header": head, "sizes": add_plot(outputs, "sizes", "Sizes", plots.sizes_figure(r))}
    for c in r["clusters"]:
        obj = types.Object()
        obj.str("title", view=types.MarkdownView())
        title = f"**{c['cluster']}**" + (f" {c['name']}" if c.get("name") else "") + f"  \n{c['size']} samples"
        if c.get("purity") is not None:
            title += f"  \n{c['majority_class']} {100 * c['purity']:.0f}%"
        if c.get("silhouette") is not None:
            title += f"  \nsilhouette {c['silhouette']:.2f}"
        item = {"title": title}
        for j, rep in enumerate(c["representatives"]):
            obj.str(f"rep_{j}", view=types.ImageView(height="96px", alt=rep["filepath"]))
            item[f"rep_{j}"] = rep["url"]
        outputs.define_property(f"cluster_{c['cluster']}", obj, label=None, view=types.HStackView())
        values[f"cluster_{c['cluster']}"] = item
    if ctx.params.get("show_representatives"):
        yield ctx.ops.set_view(clustering.load_run_view(ctx.dataset, r["run_key"], representatives=True))
    yield show_output(ctx, outputs, values)


OPERATORS = [ChooseK, EvaluateRun, CompareRuns, PlotSilhouette, VisualizeRun, RunSummary]
