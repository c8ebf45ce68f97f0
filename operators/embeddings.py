"""``compute_embeddings``: the App form, delegation and SDK entry point for
:func:`clustering.embeddings.compute_embeddings`."""

import fiftyone.operators as foo
import fiftyone.operators.types as types

import clustering.embeddings as ce

from .common import add_delegate_input, execute_from_sdk, progress_callback

DEVICES = ("auto", "cpu", "cuda")
PARAMS = (
    "model",
    "embeddings_field",
    "batch_size",
    "num_workers",
    "device",
    "overwrite",
    "skip_failures",
)


def _model_choices(models):
    view = types.DropdownView()
    for name in models:
        try:
            description = ce.model_description(name)
        except Exception:
            description = None
        view.add_choice(name, label=name, description=description)
    return view


def _field_input(ctx, inputs, target, model):
    default = ce.default_embeddings_field(model)
    prop = inputs.str(
        "embeddings_field",
        default=default,
        required=True,
        label="Embeddings field",
        description="Vector field to store the embeddings in",
    )
    field = ctx.params.get("embeddings_field") or default
    try:
        ce.validate_field_name(field)
    except ValueError as e:
        prop.invalid = True
        prop.error_message = str(e)
        return
    schema = ctx.dataset.get_field_schema(flat=True)
    if field not in schema:
        return
    ftype = schema[field]
    import fiftyone as fo

    if not isinstance(ftype, (fo.VectorField, fo.ArrayField)):
        prop.invalid = True
        prop.error_message = f"Field '{field}' exists with type {type(ftype).__name__}; choose another name"
        return
    have = target.exists(field).count()
    inputs.bool(
        "overwrite",
        default=True,
        label="Recompute samples that already have embeddings",
        description="When unchecked only samples missing the field are embedded",
    )
    inputs.view(
        "exists_warning",
        types.Warning(
            label=f"Field '{field}' already exists",
            description=(
                f"{have} of the {len(target)} target samples have a value"
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
        model=ce.DEFAULT_MODEL,
        embeddings_field="embeddings",
        batch_size=None,
        num_workers=None,
        device="auto",
        overwrite=True,
        skip_failures=True,
        delegate=False,
    ):
        """SDK entry: same parameters as
        :func:`clustering.embeddings.compute_embeddings`; returns its summary
        dict (or the delegated operation when ``delegate``)."""
        params = dict(
            model=model,
            embeddings_field=embeddings_field,
            batch_size=batch_size,
            num_workers=num_workers,
            device=device,
            overwrite=overwrite,
            skip_failures=skip_failures,
        )
        result = execute_from_sdk(self, sample_collection, params, delegate=delegate)
        if delegate:
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

        models = ce.available_models()
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
            inputs.view("model_info", types.Notice(label=ce.model_description(model)))

        _field_input(ctx, inputs, target, model)

        prop = inputs.int("batch_size", label="Batch size (optional)", description="Default: 32 on CPU, 256 on GPU", min=1)
        if (ctx.params.get("batch_size") or 1) < 1:
            prop.invalid = True
            prop.error_message = "Batch size must be >= 1"
        prop = inputs.int(
            "num_workers",
            label="Decoding workers (optional)",
            description="Processes decoding images; default from the CPU count (0 = in the main process)",
            min=0,
        )
        if (ctx.params.get("num_workers") or 0) < 0:
            prop.invalid = True
            prop.error_message = "Workers must be >= 0"
        devices = types.RadioGroup(orientation="horizontal")
        for value in DEVICES:
            devices.add_choice(value, label=value)
        inputs.enum("device", devices.values(), default="auto", label="Device", view=devices)
        inputs.bool(
            "skip_failures",
            default=True,
            label="Skip unreadable images",
            description="Mark them in '<field>_error' and continue (otherwise stop at the first one)",
        )
        add_delegate_input(inputs)
        return types.Property(inputs, view=types.View(label="Compute embeddings"))

    def resolve_delegation(self, ctx):
        return ctx.params.get("delegate", False)

    def execute(self, ctx):
        kwargs = {k: ctx.params[k] for k in PARAMS if ctx.params.get(k) not in (None, "")}
        summary = ce.compute_embeddings(
            ctx.target_view(require_flat=True),
            progress=progress_callback(ctx, "Embedding"),
            **kwargs,
        )
        if not ctx.delegated:
            ctx.ops.reload_dataset()
        summary["message"] = _markdown(summary)
        return summary

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("message", label="Summary", view=types.MarkdownView())
        outputs.str("field", label="Embeddings field")
        outputs.int("dim", label="Dimension")
        outputs.int("num_embedded", label="Embedded")
        outputs.int("num_failed", label="Failed")
        outputs.obj("errors", label="Failures (first 20)", view=types.JSONView())
        return types.Property(outputs, view=types.View(label="Embeddings computed"))


def _markdown(summary):
    lines = [
        f"**{summary['num_embedded']}** images embedded with `{summary['model']}` "
        f"into `{summary['field']}` ({summary['dim']}-d) in {summary['seconds']:.1f} s",
    ]
    if summary.get("num_skipped"):
        lines.append(f"{summary['num_skipped']} samples already had embeddings")
    if summary["num_failed"]:
        lines.append(
            f"**{summary['num_failed']}** images could not be read; see field "
            f"`{summary['error_field']}` (e.g. `{summary['error_field']} != None`)"
        )
    return "\n\n".join(lines)
