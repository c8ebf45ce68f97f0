"""``compute_embeddings``: the App form, delegation and SDK entry point for
:func:`clustering.features.embeddings.compute_embeddings`."""

import copy
import os
import socket

import fiftyone.operators as foo
import fiftyone.operators.types as types

import clustering.features.backbones as bb
import clustering.features.embeddings as ce
import clustering.features.models as embedding_models
import clustering.features.patches as cp
import clustering.features.shards as shards

from .common import Params, add_delegate_input, execute_from_sdk, progress_callback

DEVICES = ("auto", "cpu", "cuda")
NO_PATCHES = "(whole images)"
PARAMS = (
    "model",
    "embeddings_field",
    "patches_field",
    "force_square",
    "alpha",
    "batch_size",
    "num_workers",
    "device",
    "precision",
    "overwrite",
    "skip_failures",
)


def _model_choices(models):
    view = types.DropdownView()
    for name in models:
        try:
            description = embedding_models.model_description(name)
        except Exception:
            description = None
        view.add_choice(name, label=name, description=description)
    return view


def _patches_input(ctx, inputs, target):
    """The optional Detections field whose boxes are embedded; returns it."""
    fields = cp.detections_fields(target)
    if not fields:
        return None
    choices = types.DropdownView()
    choices.add_choice(NO_PATCHES, label=NO_PATCHES, description="One vector per sample")
    for name in fields:
        choices.add_choice(name, label=name, description="One vector per box, stored on its label")
    inputs.enum(
        "patches_field",
        choices.values(),
        default=NO_PATCHES,
        label="Patches field",
        description="Embed the object crops of a Detections field instead of whole images",
        view=choices,
    )
    patches_field = ctx.params.get("patches_field") or NO_PATCHES
    if patches_field == NO_PATCHES:
        return None
    inputs.bool("force_square", default=False, label="Square crops", description="Grow each box into a square")
    prop = inputs.float(
        "alpha",
        label="Box padding (optional)",
        description="Grow (e.g. 0.1 = +10%) or shrink (< 0) each box before cropping",
    )
    alpha = Params(ctx.params, lenient=True).float("alpha", None)
    if alpha is not None and not alpha > -1:
        prop.invalid = True
        prop.error_message = "Padding must be > -1"
    return patches_field


def _field_input(ctx, inputs, target, model, patches_field):
    default = embedding_models.default_embeddings_field(model)
    prop = inputs.str(
        "embeddings_field",
        default=default,
        required=True,
        label="Embeddings field" if patches_field is None else "Embeddings attribute",
        description=(
            "Vector field to store the embeddings in"
            if patches_field is None
            else f"Label attribute to store the embeddings in ('{patches_field}.detections.<attribute>')"
        ),
    )
    field = ctx.params.get("embeddings_field") or default
    try:
        embedding_models.validate_field_name(field)
    except ValueError as e:
        prop.invalid = True
        prop.error_message = str(e)
        return
    path = field if patches_field is None else f"{patches_field}.detections.{field}"
    schema = ctx.dataset.get_field_schema(flat=True)
    if path not in schema:
        return
    ftype = schema[path]
    import fiftyone as fo

    if not isinstance(ftype, (fo.VectorField, fo.ArrayField)):
        prop.invalid = True
        prop.error_message = f"Field '{path}' exists with type {type(ftype).__name__}; choose another name"
        return
    have = target.count(path) if patches_field else target.exists(field).count()
    total = target.count(f"{patches_field}.detections") if patches_field else len(target)
    unit = "labels" if patches_field else "samples"
    inputs.bool(
        "overwrite",
        default=True,
        label=f"Recompute {unit} that already have embeddings",
        description=f"When unchecked only {unit} missing the field are embedded",
    )
    inputs.view(
        "exists_warning",
        types.Warning(
            label=f"Field '{path}' already exists",
            description=(
                f"{have} of the {total} target {unit} have a value"
                + (" that will be overwritten" if ctx.params.get("overwrite", True) else "")
            ),
        ),
    )


class ComputeEmbeddings(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="compute_embeddings",
            label="Compute embeddings",
            description="Embed images with a pretrained backbone (offline EfficientNet-Lite0, VGG16, ResNet50, ...) or a FiftyOne zoo model",
            icon="/assets/icon.svg",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def __call__(
        self,
        sample_collection,
        model=embedding_models.DEFAULT_MODEL,
        embeddings_field="embeddings",
        patches_field=None,
        batch_size=None,
        num_workers=None,
        device="auto",
        overwrite=True,
        skip_failures=True,
        force_square=False,
        alpha=None,
        precision="auto",
        delegate=False,
        num_shards=None,
    ):
        """SDK entry: same parameters as
        :func:`clustering.features.embeddings.compute_embeddings`; returns its summary
        dict (or the delegated operation when ``delegate``). With ``delegate``
        and ``num_shards=N``, queues N delegated operations over disjoint
        parts of the samples (see :mod:`clustering.features.shards`) for any number of
        ``fiftyone delegated launch`` workers, and returns what was queued
        (``operations``: their ids, ``shards``: their specs)."""
        params = dict(
            model=model,
            embeddings_field=embeddings_field,
            patches_field=patches_field,
            batch_size=batch_size,
            num_workers=num_workers,
            device=device,
            precision=precision,
            overwrite=overwrite,
            skip_failures=skip_failures,
            force_square=force_square or None,
            alpha=alpha,
            num_shards=num_shards,
        )
        if num_shards is not None and not delegate:
            raise ValueError("num_shards splits delegated runs: pass delegate=True")
        result = execute_from_sdk(self, sample_collection, params, delegate=delegate)
        if delegate and not _queues_shards(params):
            return result
        if getattr(result, "error", None):
            raise RuntimeError(result.error)
        return result.result

    def resolve_input(self, ctx):
        inputs = types.Object()
        target = ctx.target_view(require_flat=True)
        inputs.view(
            "target_info",
            types.Notice(label=f"{len(target)} samples will be embedded (fewer if not recomputing)"),
        )

        models = embedding_models.available_models()
        inputs.enum(
            "model",
            models,
            default=models[0],
            required=True,
            label="Model",
            description="Built-in backbones run offline once their weights are cached; zoo models download on first use",
            view=_model_choices(models),
        )
        model = ctx.params.get("model") or models[0]
        if model in models:
            inputs.view("model_info", types.Notice(label=embedding_models.model_description(model)))

        patches_field = _patches_input(ctx, inputs, target)
        _field_input(ctx, inputs, target, model, patches_field)

        prop = inputs.int("batch_size", label="Batch size (optional)", description="Default: 8 on CPU, 256 on GPU", min=1)
        form = Params(ctx.params, lenient=True)
        if form.int("batch_size", 1) < 1:
            prop.invalid = True
            prop.error_message = "Batch size must be >= 1"
        prop = inputs.int(
            "num_workers",
            label="Decoding workers (optional)",
            description="Processes decoding images; default from the CPU count (0 = in the main process)",
            min=0,
        )
        if form.int("num_workers", 0) < 0:
            prop.invalid = True
            prop.error_message = "Workers must be >= 0"
        devices = types.RadioGroup(orientation="horizontal")
        for value in DEVICES:
            devices.add_choice(value, label=value)
        inputs.enum("device", devices.values(), default="auto", label="Device", view=devices)
        precisions = types.RadioGroup(orientation="horizontal")
        for value in bb.PRECISIONS:
            precisions.add_choice(value, label=value)
        inputs.enum(
            "precision",
            precisions.values(),
            default="auto",
            label="Precision",
            description="Built-in models. auto: fp16 on GPUs, bf16 on CPUs with bfloat16 units "
            "(AMX or AVX512-BF16: 1.4-2.4x faster), fp32 elsewhere",
            view=precisions,
        )
        inputs.bool(
            "skip_failures",
            default=True,
            label="Skip unreadable images",
            description="Mark them in '<field>_error' and continue (otherwise stop at the first one)",
        )
        add_delegate_input(inputs)
        if ctx.params.get("delegate"):
            inputs.int(
                "num_shards",
                min=1,
                label="Shards (optional)",
                description=(
                    "Split into this many delegated operations over disjoint parts of the samples, "
                    "for several `fiftyone delegated launch` workers (one per GPU or machine)"
                ),
            )
        return types.Property(inputs, view=types.View(label="Compute embeddings"))

    def resolve_delegation(self, ctx):
        # a sharded request runs now: it only queues its shards
        return bool(ctx.params.get("delegate", False)) and not _queues_shards(ctx.params)

    def resolve_run_name(self, ctx):
        shard = ctx.params.get("shard")
        return f"{self.config.label} ({shards.describe(shard)})" if shard else self.config.label

    def execute(self, ctx):
        target = ctx.target_view(require_flat=True)
        if _queues_shards(ctx.params):
            return _queue_shards(self, ctx, target)
        kwargs = {k: ctx.params[k] for k in PARAMS if ctx.params.get(k) not in (None, "", NO_PATCHES)}
        if "patches_field" not in kwargs:  # patch options left over from the form
            kwargs.pop("force_square", None)
            kwargs.pop("alpha", None)
        shard = ctx.params.get("shard")
        summary = ce.compute_embeddings(
            shards.shard_view(target, shard) if shard else target,
            progress=progress_callback(ctx, "Embedding"),
            **kwargs,
        )
        if shard:  # which shard, and which worker executed it
            summary.update(shard=shard, executed_by=f"{socket.gethostname()}:{os.getpid()}")
        if not ctx.delegated:
            ctx.ops.reload_dataset()
        summary["message"] = _markdown(summary)
        return summary

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("message", label="Summary", view=types.MarkdownView())
        if _queues_shards(ctx.params):
            outputs.list("operations", types.String(), label="Queued operations")
            return types.Property(outputs, view=types.View(label="Shards queued"))
        outputs.str("field", label="Embeddings field")
        outputs.int("dim", label="Dimension")
        outputs.int("num_embedded", label="Embedded")
        outputs.int("num_failed", label="Failed")
        outputs.obj("errors", label="Failures (first 20)", view=types.JSONView())
        return types.Property(outputs, view=types.View(label="Embeddings computed"))


def _where(summary):
    """`` on cpu (bf16)`` for built-in models, empty otherwise."""
    if not summary.get("device"):
        return ""
    precision = f" ({summary['precision']})" if summary.get("precision") else ""
    return f" on {summary['device']}{precision}"


def _queues_shards(params):
    """Whether a request splits the work into shards (rather than being one)."""
    return (params.get("num_shards") or 1) > 1 and not params.get("shard")


def _queue_shards(operator, ctx, target):
    """Queues one delegated operation per shard of ``target``, each with this
    request's context and parameters plus its shard spec."""
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionContext

    specs = shards.shard_specs(target, ctx.params["num_shards"])
    service = DelegatedOperationService()
    operations = []
    for spec in specs:
        request = copy.deepcopy(ctx.request_params)
        request["params"] = dict(ctx.params, shard=spec, num_shards=None, delegate=True)
        request["delegated"] = True
        shard_ctx = ExecutionContext(request_params=request)
        operation = service.queue_operation(
            operator=operator.uri,
            label=operator.resolve_run_name(shard_ctx),
            context=shard_ctx.serialize(),
            rerunnable=True,
        )
        operations.append(str(operation.id))
    summary = {"num_shards": len(specs), "shards": specs, "operations": operations}
    summary["message"] = (
        f"**{len(specs)}** delegated operations queued, one per shard of the {len(target)} samples: "
        "run `fiftyone delegated launch` on each worker"
    )
    return summary


def _markdown(summary):
    if "patches_field" in summary:
        return _patches_markdown(summary)
    lines = [
        f"**{summary['num_embedded']}** images embedded with `{summary['model']}` "
        f"into `{summary['field']}` ({summary['dim']}-d) in {summary['seconds']:.1f} s{_where(summary)}",
    ]
    if summary.get("num_skipped"):
        lines.append(f"{summary['num_skipped']} samples already had embeddings")
    if summary["num_failed"]:
        lines.append(
            f"**{summary['num_failed']}** images could not be read; see field "
            f"`{summary['error_field']}` (e.g. `{summary['error_field']} != None`)"
        )
    return "\n\n".join(lines)


def _patches_markdown(summary):
    lines = [
        f"**{summary['num_embedded']}** patches of `{summary['patches_field']}` embedded with "
        f"`{summary['model']}` into `{summary['field']}` ({summary['dim']}-d) in {summary['seconds']:.1f} s"
        f"{_where(summary)}",
    ]
    if summary["num_skipped"]:
        lines.append(f"{summary['num_skipped']} labels already had embeddings")
    if summary["num_degenerate"]:
        lines.append(f"{summary['num_degenerate']} boxes have no area inside their image (not embedded)")
    if summary["num_failed"]:
        lines.append(
            f"**{summary['num_failed']}** patches of {summary['num_failed_images']} unreadable "
            "images were not embedded (see Failures)"
        )
    return "\n\n".join(lines)
