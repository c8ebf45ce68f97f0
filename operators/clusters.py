"""``compute_clusters``: the App form, delegation and SDK entry point for
:func:`clustering.compute_clusters`."""

import os

import fiftyone.operators as foo
import fiftyone.operators.types as types

import clustering
from clustering import plots
from clustering.engine.methods import available_methods, get_method
from clustering.runs.browse import UNSTABLE_BELOW

from .common import (
    Params,
    add_delegate_input,
    add_plot,
    execute_from_sdk,
    fmt,
    method_inputs,
    preprocessing_inputs,
    run_with_progress,
    show_output,
    vector_fields,
)

def _method_choices():
    view = types.DropdownView()
    for name in available_methods():
        view.add_choice(name, label=get_method(name).label)
    return view


def _features_inputs(ctx, inputs, target_view):
    """Embeddings source; returns (field, number of samples with embeddings or None)."""
    fields = vector_fields(target_view)
    source_view = types.RadioGroup(orientation="horizontal")
    source_view.add_choice("field", label="Existing embeddings field")
    source_view.add_choice("model", label="Compute with a model")
    # an explicit embeddings field (SDK or saved params) selects the field source
    source = ctx.params.get("features") or (
        "model" if ctx.params.get("model") or not (fields or ctx.params.get("embeddings")) else "field"
    )
    inputs.enum("features", source_view.values(), default=source, label="Features", view=source_view)

    if source == "field":
        if not fields:
            inputs.view(
                "no_fields",
                types.Error(
                    label="No embeddings field",
                    description="This dataset has no vector, array or list-of-numbers field; choose 'Compute with a model'",
                ),
            )
            return None, 0
        inputs.enum("embeddings", fields, default=fields[0], required=True, label="Embeddings field", view=types.DropdownView())
        field = ctx.params.get("embeddings") or fields[0]
        return field, target_view.exists(field).count()

    from clustering.features.models import available_models, default_embeddings_field

    models = available_models()
    inputs.enum("model", models, default=models[0], required=True, label="Model", view=types.DropdownView())
    model = ctx.params.get("model") or models[0]
    inputs.str(
        "embeddings",
        default=default_embeddings_field(model),
        label="Store embeddings in field",
        description="Samples that already have this field are not recomputed",
    )
    return None, len(target_view)


def _method_inputs(ctx, inputs, n_available):
    inputs.enum("method", available_methods(), default="generalized_kmeans", label="Method", view=_method_choices())
    method = get_method(ctx.params.get("method") or "generalized_kmeans")

    if method.needs_k:
        prop = inputs.int("k", default=5, required=True, min=1, label="Number of clusters (k)")
        k = Params(ctx.params, lenient=True).int("k", None)
        if k is not None and n_available is not None and k > n_available:
            prop.invalid = True
            prop.error_message = f"k={k} is larger than the {n_available} samples with embeddings"

    method_inputs(ctx, inputs, method)
    if method.needs_k and method.can_assign:
        prop = inputs.str(
            "levels", label="Sub-cluster levels (optional)",
            description="A cluster tree in one run: the number of sub-clusters of each cluster, one level "
            "after another (e.g. '4', or '4, 3'), or 'auto' for the k Choose k recommends for each cluster",
        )
        try:
            parse_levels(ctx.params.get("levels"), 1)
        except ValueError as e:
            prop.invalid = True
            prop.error_message = str(e)
    inputs.bool(
        "stability",
        default=bool(method.can_assign and method.needs_k),
        label="Stability score per cluster",
        description="Refits on random half-samples score how reliably each cluster is found (0-1; "
        "below 0.6 marked unstable). Costs about 0.4-1x the fit on large sets, up to 3x on small ones",
    )
    if method.can_assign:
        inputs.int(
            "fit_sample_size",
            min=1,
            label="Fit on a sample of (optional)",
            description=(
                "Empty: fit on every sample when the features fit in memory, else on the largest "
                "random sample that does. Either way every sample is then assigned to its "
                "nearest center, a chunk at a time"
            ),
        )


def parse_levels(text, k):
    """The ``levels`` of ``compute_clusters`` from the form's text (``"4, 3"``,
    ``"auto"``; a list passes as is), below a top level of ``k``; None when
    empty."""
    if text in (None, "", []):
        return None
    if isinstance(text, (list, tuple)):
        return list(text)
    below = []
    for part in str(text).replace(";", ",").split(","):
        part = part.strip().lower()
        if part == "auto":
            below.append("auto")
        elif part.isdigit() and int(part) >= 2:
            below.append(int(part))
        else:
            raise ValueError(f"Use numbers >= 2 or 'auto' separated by commas; got {part!r}")
    return [k, *below]


def _output_inputs(ctx, inputs):
    prop = inputs.str(
        "run_key",
        default="clusters",
        required=True,
        label="Run key",
        description="Name of this run; output fields are derived from it",
    )
    run_key = Params(ctx.params, lenient=True).str("run_key", "clusters")
    if not run_key.isidentifier():
        prop.invalid = True
        prop.error_message = "Use letters, digits and underscores, not starting with a digit"
        return
    exists = run_key in ctx.dataset.list_runs()
    overwrite_prop = inputs.bool("overwrite", default=False, label="Overwrite an existing run with this key")
    if exists and not ctx.params.get("overwrite", False):
        prop.invalid = True
        prop.error_message = f"Run '{run_key}' exists; choose another key or check 'Overwrite'"
        overwrite_prop.description = f"Run '{run_key}' exists: overwriting deletes its fields first"
    if exists and ctx.params.get("overwrite", False):
        inputs.bool(
            "keep_identity",
            default=True,
            label="Keep cluster identity",
            description=f"New clusters that match clusters of the old '{run_key}' by their members keep "
            "their ids, names, tags and curation history; the others are reported as new or vanished",
        )
    for name, suffix, what in (
        ("label_field", "cluster", "cluster label (int)"),
        ("loss_field", "loss", "loss to its center (float)"),
        ("rep_field", "rep", "representative rank (1 = most representative)"),
    ):
        inputs.str(name, label=f"Field for {what} (optional)", description=f"Default: {run_key}_{suffix}")
    inputs.int("num_representatives", default=5, min=1, label="Representatives ranked per cluster")


def summarize(results):
    """Output form and values for a run's summary (from its read model,
    ``clustering.get_run_info``): markdown and a bar chart of sizes."""
    config = results.config
    summary = clustering.get_run_info(results.samples, results.key)["summary"]
    loss = config.loss
    param = config.loss_param
    lines = [
        f"**{summary['num_clusters']} clusters** of {summary['num_clustered']} samples "
        f"({config.method}{', loss ' + loss if loss else ''}{', ' + format(param, '.4g') if param else ''})",
        f"objective {summary['objective']:.6g}, {results.timings['total_s']:.1f} s",
        "",
    ]
    requested = config.k_requested
    if requested and requested != summary["num_clusters"]:
        lines += [
            f"**Only {summary['num_clusters']} of the {requested} requested clusters could be formed**: "
            "the features have fewer distinct vectors than k.",
            "",
        ]
    scored = summary.get("stability") is not None
    if scored:
        unstable = [str(c["cluster"]) for c in summary["clusters"]
                    if c.get("stability") is not None and c["stability"] < UNSTABLE_BELOW]
        below = f"unstable (below {UNSTABLE_BELOW}): {', '.join(unstable)}" if unstable else "none unstable"
        lines += [f"stability {summary['stability']:.2f} (size-weighted), {below}", ""]
    header = ["cluster", "size", *(["stability"] if scored else []), "representative"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in summary["clusters"]:
        rep = os.path.basename(c["representative_filepath"] or "")
        score = [fmt(c.get("stability"), ".2f")] if scored else []
        lines.append("| " + " | ".join([str(c["cluster"]), str(c["size"]), *score, rep]) + " |")
    outputs = types.Object()
    outputs.str("run_key", label="Run key")
    outputs.str("summary", label="Summary", view=types.MarkdownView())
    figure = plots.sizes_figure(dict(summary, run_key=results.key))
    values = {
        "run_key": results.key,
        "summary": "\n".join(lines),
        "sizes": add_plot(outputs, "sizes", "Cluster sizes", figure),
    }
    return outputs, values


class ComputeClusters(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="compute_clusters",
            label="Compute clusters",
            description="Cluster samples with generalized loss-based k-means or scikit-learn",
            icon="/assets/icon.svg",
            dynamic=True,
            execute_as_generator=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def __call__(self, sample_collection, run_key, delegate=False, **params):
        """SDK entry: same parameters as :func:`clustering.compute_clusters`;
        returns its results (or the delegated operation when ``delegate``)."""
        embeddings = params.get("embeddings")
        if embeddings is not None and not isinstance(embeddings, str):
            raise ValueError("The operator takes an embeddings field name; pass arrays to clustering.compute_clusters")
        levels = params.get("levels")
        if isinstance(levels, (list, tuple)):  # the form's text: the levels below the top
            params = dict(params, k=levels[0], levels=", ".join(map(str, levels[1:])))
        result = execute_from_sdk(self, sample_collection, dict(params, run_key=run_key), delegate=delegate)
        if delegate:
            return result
        return clustering.load_clustering_results(sample_collection, run_key)

    def resolve_input(self, ctx):
        inputs = types.Object()
        target_view = ctx.target_view()
        _, n_available = _features_inputs(ctx, inputs, target_view)
        preprocessing_inputs(ctx, inputs)
        _method_inputs(ctx, inputs, n_available)
        _output_inputs(ctx, inputs)
        add_delegate_input(inputs)
        return types.Property(inputs, view=types.View(label="Compute clusters"))

    def resolve_delegation(self, ctx):
        return ctx.params.get("delegate", False)

    def execute(self, ctx):
        kwargs = self._clustering_kwargs(ctx.params)
        samples = ctx.target_view()

        def work(progress):
            return clustering.compute_clusters(samples, progress=progress, **kwargs)

        results = yield from run_with_progress(ctx, "Clustering", work)
        if not ctx.delegated:
            yield ctx.ops.reload_dataset()
            yield show_output(ctx, *summarize(results))

    @staticmethod
    def _clustering_kwargs(params):
        """The form's parameters that apply to the chosen method and source."""
        method = get_method(params.get("method") or "generalized_kmeans")
        names = {
            "run_key", "embeddings", "model", "method", "k", "normalize", "reduction",
            "n_components", "num_representatives", "label_field", "loss_field",
            "rep_field", "overwrite", "stability", *method.defaults,
        }
        if params.get("overwrite"):
            names.add("keep_identity")
        if method.can_assign:
            names.add("fit_sample_size")
        kwargs = {n: params[n] for n in names if params.get(n) not in (None, "")}
        if params.get("features") == "field":
            kwargs.pop("model", None)
        if kwargs.get("reduction") in (None, "none", "auto"):
            kwargs.pop("n_components", None)
        if not method.needs_k:
            kwargs.pop("k", None)
        levels = parse_levels(params.get("levels"), kwargs.get("k"))
        if levels:
            kwargs["levels"] = levels
        return kwargs
