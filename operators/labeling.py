"""``label_clusters``: the App form, delegation and SDK entry point for
:func:`clustering.label_clusters` (naming clusters with a vision chat model or
offline with ImageNet classes).

The API key is the plugin secret ``OPENAI_API_KEY`` (``ctx.secrets``; from the
environment of the App server, of the SDK process or of the delegated-operation
launcher). It is passed to the library only, never put in the operation's
parameters, results or logs.
"""

import fiftyone.operators as foo
import fiftyone.operators.types as types

import clustering
from clustering.naming import labeling as cl

from .common import (
    Params,
    add_delegate_input,
    execute_from_sdk,
    progress_callback,
    run_key_input,
    run_with_progress,
    show_output,
)

SECRET = cl.API_KEY_ENV
PARAMS = (
    "run_key", "provider", "model", "base_url", "num_images", "max_side", "overwrite",
    "describe", "dry_run", "max_concurrency", "timeout", "max_retries", "deadline",
    "neighbors", "neighbor_images",
)
OPENAI_ONLY = (
    "model", "base_url", "max_side", "describe", "max_concurrency", "timeout", "max_retries", "deadline",
    "neighbors", "neighbor_images",
)
_SDK_FLAG = "_sdk_call"  # set by __call__: return the summary instead of streaming App messages


def _labeling_kwargs(params):
    kwargs = {n: params[n] for n in PARAMS if params.get(n) not in (None, "")}
    if kwargs.get("provider", "openai") == "offline":
        for name in OPENAI_ONLY:
            kwargs.pop(name, None)
    return kwargs


def _provider_inputs(ctx, inputs):
    providers = types.RadioGroup(orientation="horizontal")
    providers.add_choice("openai", label="Vision LLM (OpenAI-compatible)", description="Sends each cluster's representative images to a chat model")
    providers.add_choice("offline", label="Offline (ImageNet classes)", description="No network: the most frequent ImageNet classes of the representatives")
    inputs.enum("provider", providers.values(), default="openai", label="Naming", view=providers)
    return ctx.params.get("provider") or "openai"


def _openai_inputs(ctx, inputs):
    inputs.str("model", default=cl.DEFAULT_MODEL, label="Model", description="A vision chat model, e.g. gpt-4o-mini or gpt-4o")
    inputs.str(
        "base_url",
        label="Base URL (optional)",
        description="An OpenAI-compatible endpoint, e.g. http://localhost:8000/v1; default api.openai.com",
    )
    prop = inputs.int("max_side", default=cl.DEFAULT_MAX_SIDE, min=16, label="Longest image side sent (px)")
    if Params(ctx.params, lenient=True).int("max_side", cl.DEFAULT_MAX_SIDE) < 16:
        prop.invalid = True
        prop.error_message = "Use at least 16 px"
    inputs.bool("describe", default=True, label="Also ask for a one-sentence description")
    inputs.int(
        "neighbors", default=cl.DEFAULT_NEIGHBORS, min=0, label="Similar clusters shown for contrast",
        description="Each request also shows images of this many nearest sibling clusters, so that "
        "similar clusters get names that tell them apart (0: none)",
    )
    inputs.int("neighbor_images", default=cl.DEFAULT_NEIGHBOR_IMAGES, min=1, label="Images of each of them")
    if not ctx.secrets[SECRET] and not ctx.params.get("dry_run", False):
        inputs.view(
            "no_key",
            types.Warning(
                label=f"No {SECRET}",
                description=(
                    f"Set the {SECRET} environment variable where FiftyOne runs (plugin "
                    "secret) to send requests; a dry run or offline naming needs no key"
                ),
            ),
        )


def _plan_notice(ctx, inputs, run_key, provider):
    try:
        results = clustering.load_clustering_results(ctx.dataset, run_key)
    except Exception:
        return
    clusters = results.cluster_ids()
    names = getattr(results, "names", None) or {}
    named = sum(1 for c in clusters if names.get(str(c)))
    todo = len(clusters) if ctx.params.get("overwrite", False) else len(clusters) - named
    form = Params(ctx.params, lenient=True)
    n_images = form.int("num_images", cl.DEFAULT_NUM_IMAGES)
    shown = min(form.int("neighbors", cl.DEFAULT_NEIGHBORS), max(len(clusters) - 1, 0))
    contrast = shown * form.int("neighbor_images", cl.DEFAULT_NEIGHBOR_IMAGES)
    what = (
        f"{todo} requests with up to {todo * (n_images + contrast)} images ({contrast} of similar clusters each)"
        if provider == "openai" else f"up to {todo * n_images} images classified offline"
    )
    inputs.view(
        "plan",
        types.Notice(
            label=f"{len(clusters)} clusters, {named} already named: {todo} to name ({what})"
        ),
    )


def _summary_outputs():
    outputs = types.Object()
    outputs.str("headline", label="Summary", view=types.MarkdownView())
    table = types.TableView()
    for key, label in (
        ("cluster", "Cluster"), ("size", "Size"), ("name", "Name"),
        ("description", "Description"), ("status", "Status"), ("error", "Error"),
    ):
        table.add_column(key, label=label)
    outputs.list("clusters", types.Object(), label="Clusters", view=table)
    return outputs


def summary_view(summary):
    """The App output: a headline and the cluster table."""
    if summary["dry_run"]:
        headline = (
            f"**Dry run** ({summary['provider']}): would send {summary['requests_planned']} "
            f"requests with {summary['images']} images, {summary['image_bytes']:,} image bytes "
            f"({summary['payload_bytes']:,} bytes of request bodies). Nothing was sent or stored."
        )
    else:
        headline = (
            f"Named {len(summary['named'])} clusters of `{summary['run_key']}` with "
            f"{summary['provider']}{' / ' + summary['model'] if summary.get('model') else ''}"
            f" ({summary['requests_sent']} requests, {summary['images']} images); "
            f"{len(summary['skipped'])} kept, {len(summary['errors'])} failed. "
            f"Names are in the field `{summary['name_field']}`."
        )
    rows = [
        {k: ("" if v is None else v) for k, v in row.items()} for row in summary["clusters"]
    ]
    return {"headline": headline, "clusters": rows}


class LabelClusters(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="label_clusters",
            label="Name clusters",
            description="Name each cluster from its representative images with a vision LLM, or offline with ImageNet classes",
            icon="/assets/icon.svg",
            dynamic=True,
            execute_as_generator=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def __call__(
        self,
        sample_collection,
        run_key,
        provider="openai",
        model=None,
        base_url=None,
        num_images=None,
        max_side=None,
        overwrite=False,
        describe=True,
        dry_run=False,
        max_concurrency=None,
        timeout=None,
        max_retries=None,
        deadline=None,
        neighbors=None,
        neighbor_images=None,
        delegate=False,
    ):
        """SDK entry: same parameters as :func:`clustering.label_clusters` but
        ``api_key`` (the key is the plugin secret ``OPENAI_API_KEY``, from the
        environment). Returns the summary dict (the delegated operation when
        ``delegate``)."""
        params = dict(
            run_key=run_key, provider=provider, model=model, base_url=base_url,
            num_images=num_images, max_side=max_side, overwrite=overwrite,
            describe=describe, dry_run=dry_run, max_concurrency=max_concurrency,
            timeout=timeout, max_retries=max_retries, deadline=deadline, neighbors=neighbors,
            neighbor_images=neighbor_images,
        )
        if not delegate:
            params[_SDK_FLAG] = True
        result = execute_from_sdk(self, sample_collection, params, delegate=delegate)
        return result if delegate else result.result

    def resolve_input(self, ctx):
        inputs = types.Object()
        run_key = run_key_input(ctx, inputs, description="The run whose clusters get names")
        if run_key is None:
            return types.Property(inputs)
        provider = _provider_inputs(ctx, inputs)
        if provider == "openai":
            _openai_inputs(ctx, inputs)
        inputs.int(
            "num_images",
            default=cl.DEFAULT_NUM_IMAGES,
            min=1,
            label="Images per cluster",
            description="The most representative images of each cluster (best first)",
        )
        inputs.bool(
            "overwrite",
            default=False,
            label="Rename clusters that already have a name",
            description="Unchecked: only clusters without a name are sent",
        )
        inputs.bool(
            "dry_run",
            default=False,
            label="Dry run",
            description="Only count the requests, images and bytes that would be sent",
        )
        _plan_notice(ctx, inputs, run_key, provider)
        add_delegate_input(inputs)
        return types.Property(inputs, view=types.View(label="Name clusters"))

    def resolve_delegation(self, ctx):
        return ctx.params.get("delegate", False)

    def execute(self, ctx):
        kwargs = _labeling_kwargs(ctx.params)
        api_key = ctx.secrets[SECRET] if kwargs.get("provider", "openai") == "openai" else None
        samples = ctx.target_view()

        def work(progress):
            return cl.label_clusters(samples, api_key=api_key, progress=progress, **kwargs)

        if ctx.delegated:
            return work(progress_callback(ctx, "Naming clusters"))
        if ctx.params.get(_SDK_FLAG):
            return work(None)
        return self._execute_in_app(ctx, work)

    def _execute_in_app(self, ctx, work):
        summary = yield from run_with_progress(ctx, "Naming clusters", work)
        if not summary["dry_run"]:
            yield ctx.ops.reload_dataset()
        yield show_output(ctx, _summary_outputs(), summary_view(summary))
