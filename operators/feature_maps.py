"""Feature maps in the App: the ``Feature maps`` modal panel and the
``show_feature_maps`` operator, thin wrappers over :mod:`clustering.features.activations`."""

import fiftyone.operators as foo
import fiftyone.operators.types as types

import clustering.features.activations as ca
import clustering.features.backbones as bb

from .common import add_delegate_input, execute_from_sdk, progress_callback

OPERATOR_URI = "@imgclust/clustering/show_feature_maps"
TILE = 112  # pixels per channel in the shown strips
MAX_CHANNELS = 32
# the panel's controls, by their path in its state
MODEL, CHANNELS, ORDER, LAYERS = "controls.row.model", "controls.row.channels", "controls.row.order", "controls.layers"


def _model_choices():
    view = types.DropdownView()
    for name in bb.available_models():
        where = "offline" if ca.weights_available(name) else "weights not cached"
        view.add_choice(name, label=name, description=f"{bb.get_spec(name).description} ({where})")
    return view


def _order_choices():
    view = types.DropdownView()
    view.add_choice("activation", label="most activated")
    view.add_choice("index", label="first (as in the documents)")
    return view


def _sample(ctx, sample_id):
    """The sample ``sample_id`` of the App's dataset, or of its view (a patch,
    frame or clip: whose ``filepath`` is its source image)."""
    try:
        return ctx.dataset[sample_id]
    except KeyError:
        return ctx.view[sample_id]


def render_maps(layers):
    """``[{"caption", "image"}]``: one row per layer, its channels as a PNG data URL."""
    return [
        {
            "caption": f"**{ca.describe(layer)}** · channels {', '.join(map(str, layer.channels))}",
            "image": ca.png_data_url(ca.layer_strip(layer, tile=TILE)),
        }
        for layer in layers
    ]


# --------------------------------------------------------------------------
# Panel
# --------------------------------------------------------------------------


class FeatureMapsPanel(foo.Panel):
    """The current sample's feature maps, one row per layer, recomputed when
    the user moves to another sample or changes a control. The controls'
    values live in the panel state at their paths (``MODEL``, ...); the images
    in its data."""

    @property
    def config(self):
        return foo.PanelConfig(
            name="feature_maps",
            label="Feature maps",
            surfaces="modal",
            icon="layers",
            help_markdown=(
                "What the network sees: the activations of a backbone's layers for this sample, "
                "with the preprocessing of the plugin's embeddings. Each channel is standardized "
                "(x64 + 128) and shown in viridis."
            ),
        )

    def on_load(self, ctx):
        if not ctx.panel.state.get(MODEL):
            self._set_model(ctx, ca.default_model())
            ctx.panel.set_state({CHANNELS: ca.DEFAULT_CHANNELS, ORDER: "activation"})
        self._update(ctx)

    def on_change_current_sample(self, ctx):
        self._update(ctx)

    def on_change_model(self, ctx):
        self._set_model(ctx, ctx.params.get("value") or bb.DEFAULT_MODEL)
        self._update(ctx)

    def use_offline_model(self, ctx):
        self._set_model(ctx, bb.DEFAULT_MODEL)
        self._update(ctx)

    def on_change_setting(self, ctx):
        self._update(ctx)

    def store_heatmaps(self, ctx):
        ctx.prompt(OPERATOR_URI, params={"model": ctx.panel.state.get(MODEL), "store_heatmaps": True})

    def _set_model(self, ctx, model):
        ctx.panel.set_state({MODEL: model, LAYERS: ca.default_layers(model)})

    def _update(self, ctx):
        """One forward pass for the current sample: captions to the state,
        images to the data."""
        state = ctx.panel.state
        model, layers = state.get(MODEL), state.get(LAYERS)
        ctx.panel.set_state({"error": None, "unavailable": None, "rows": [], "sample": None})
        if not ctx.current_sample:
            return
        if not layers:
            ctx.panel.set_state("error", "Choose at least one layer.")
            return
        sample = _sample(ctx, ctx.current_sample)
        channels = state.get(CHANNELS)
        channels = int(channels) if isinstance(channels, (int, float)) and channels >= 1 else ca.DEFAULT_CHANNELS
        try:
            maps = ca.feature_maps(sample, model, layers, min(channels, MAX_CHANNELS), state.get(ORDER) or "activation")
        except bb.WeightsUnavailableError as e:
            ctx.panel.set_state("unavailable", {"label": f"{model} cannot be loaded here", "description": str(e)})
            return
        except (ValueError, OSError, RuntimeError) as e:
            ctx.panel.set_state("error", f"{type(e).__name__}: {e}")
            return
        rows = render_maps(maps)
        name = sample.filepath.rsplit("/", 1)[-1]
        ctx.panel.set_state({
            "sample": f"`{name}` as {model} sees it: {bb.get_spec(model).preprocessing}",
            "rows": [row["caption"] for row in rows],
        })
        ctx.panel.set_data({f"map_{i}": row["image"] for i, row in enumerate(rows)})

    def render(self, ctx):
        state = ctx.panel.state
        model = state.get(MODEL) or bb.DEFAULT_MODEL
        panel = types.Object()
        controls = panel.v_stack("controls", gap=1)
        row = controls.h_stack("row", align_y="bottom", gap=2)
        row.enum("model", bb.available_models(), label="Model", view=_model_choices(),
                 on_change=self.on_change_model)
        row.int("channels", min=1, max=MAX_CHANNELS, label="Channels", on_change=self.on_change_setting)
        row.enum("order", list(ca.ORDERS), label="Channel order", view=_order_choices(),
                 on_change=self.on_change_setting)
        row.btn("store_heatmaps", label="Store as heatmaps…", on_click=self.store_heatmaps, variant="outlined")
        layer_choices = types.DropdownView(multiple=True)
        for name in _layer_choices(model):
            layer_choices.add_choice(name, label=name)
        controls.list("layers", types.String(), label="Layers", view=layer_choices, on_change=self.on_change_setting)

        if state.unavailable:
            panel.view("unavailable_warning", types.Warning(**state.unavailable))
            panel.btn("use_offline_model", label=f"Use the offline model ({bb.DEFAULT_MODEL})",
                      on_click=self.use_offline_model, variant="contained")
        elif state.error:
            panel.view("error", types.Error(label=state.error))
        elif not ctx.current_sample:
            panel.md("Open a sample to see its feature maps.", name="no_sample")
        else:
            panel.md(state.sample or "", name="sample")
            for i, caption in enumerate(state.rows or []):
                panel.md(caption, name=f"caption_{i}")
                panel.img(f"map_{i}", width="100%", alt_text=caption, point_on_hover=False)
        return types.Property(panel, view=types.GridView(orientation="vertical", gap=1))


def _layer_choices(model):
    """The model's layers where its weights load offline; else its defaults
    (nothing is downloaded to draw the form)."""
    return ca.available_layers(model) if ca.weights_available(model) else ca.default_layers(model)


# --------------------------------------------------------------------------
# Operator
# --------------------------------------------------------------------------


def _shown_sample(ctx):
    """The current sample (modal), else the first selected one, else the view's first."""
    sample_id = ctx.current_sample or (ctx.selected[0] if ctx.selected else None)
    return _sample(ctx, sample_id) if sample_id else ctx.view.first()


class ShowFeatureMaps(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="show_feature_maps",
            label="Show feature maps",
            description="A sample's feature maps, layer by layer; store one layer's mean activation as a heatmap",
            icon="/assets/icon.svg",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def __call__(self, sample_collection, model=ca.DOCUMENTS_MODEL, layer=None, heatmap_field=None,
                 batch_size=None, delegate=False):
        """SDK entry: stores ``layer``'s mean activation of ``model`` as a
        Heatmap in ``heatmap_field`` for the samples of ``sample_collection``
        (see :func:`clustering.features.activations.compute_feature_heatmaps`); returns
        its summary (or the delegated operation when ``delegate``). For the
        maps themselves use :func:`clustering.feature_maps`."""
        params = dict(model=model, layer=layer, heatmap_field=heatmap_field, batch_size=batch_size,
                      store_heatmaps=True, show=False)
        result = execute_from_sdk(self, sample_collection, params, delegate=delegate)
        if delegate:
            return result
        if getattr(result, "error", None):
            raise RuntimeError(result.error)
        return result.result["heatmaps"]

    def resolve_input(self, ctx):
        inputs = types.Object()
        models = bb.available_models()
        model = ctx.params.get("model") or ca.default_model()
        inputs.enum("model", models, default=model, required=True, label="Model", view=_model_choices())
        if model in models and not ca.weights_available(model):
            inputs.view("weights_warning", types.Warning(
                label=f"{model}: weights not cached",
                description=f"They are downloaded on first use where there is network; offline, use {bb.DEFAULT_MODEL}",
            ))
        inputs.int("channels", default=ca.DEFAULT_CHANNELS, min=1, max=MAX_CHANNELS, label="Channels shown per layer")
        inputs.enum("order", list(ca.ORDERS), default="activation", label="Channel order", view=_order_choices())
        inputs.bool("store_heatmaps", default=False, label="Store one layer's mean activation as a heatmap",
                    description="A Heatmap field the App overlays on the images")
        if ctx.params.get("store_heatmaps") and model in models:
            inputs.view_target(ctx, action_description="Store heatmaps for")
            inputs.view("target_info", types.Notice(label=f"{len(ctx.target_view())} samples will get a heatmap"))
            layers = _layer_choices(model)
            defaults = ca.default_layers(model)
            layer_default = defaults[-1] if defaults else layers[-1]
            layer_view = types.DropdownView()
            for name in layers:
                layer_view.add_choice(name, label=name)
            inputs.enum("layer", layer_view.values(), default=layer_default, required=True, label="Layer", view=layer_view)
            layer = ctx.params.get("layer") or layer_default
            default_field = ca.default_heatmap_field(model, layer)
            prop = inputs.str("heatmap_field", default=default_field, required=True, label="Heatmap field")
            try:
                ca.validate_heatmap_field(ctx.dataset, ctx.params.get("heatmap_field") or default_field,
                                          model, layer, ctx.target_view())
            except ValueError as e:
                prop.invalid = True
                prop.error_message = str(e)
            add_delegate_input(inputs)
        return types.Property(inputs, view=types.View(label="Show feature maps"))

    def resolve_delegation(self, ctx):
        return bool(ctx.params.get("store_heatmaps") and ctx.params.get("delegate", False))

    def execute(self, ctx):
        p = ctx.params
        model = p.get("model") or ca.DOCUMENTS_MODEL
        result = {}
        if p.get("show", True) and not ctx.delegated:
            sample = _shown_sample(ctx)
            if sample is not None:
                layers = ca.feature_maps(sample, model, None, p.get("channels") or ca.DEFAULT_CHANNELS,
                                         p.get("order") or "activation")
                rows = render_maps(layers)
                result["sample"] = f"`{sample.filepath}` as {model} sees it"
                result["captions"] = [row["caption"] for row in rows]
                result.update({f"map_{i}": row["image"] for i, row in enumerate(rows)})
        if p.get("store_heatmaps"):
            kwargs = {"batch_size": p["batch_size"]} if p.get("batch_size") else {}
            result["heatmaps"] = ca.compute_feature_heatmaps(
                ctx.target_view(), p.get("heatmap_field"), model, p.get("layer"),
                progress=progress_callback(ctx, "Heatmaps"), **kwargs,
            )
            if not ctx.delegated:
                ctx.ops.reload_dataset()
        return result

    def resolve_output(self, ctx):
        results = ctx.results or {}
        outputs = types.Object()
        if results.get("heatmaps"):
            h = results["heatmaps"]
            outputs.md(
                f"**{h['num_written']}** heatmaps of {h['model']} `{h['layer']}` "
                f"({'×'.join(map(str, h['shape'] or ()))}) stored in `{h['field']}`"
                + (f"; **{h['num_failed']}** images could not be read" if h["num_failed"] else ""),
                name="heatmaps_summary",
            )
        if results.get("sample"):
            outputs.md(results["sample"], name="sample_md")
            for i, caption in enumerate(results.get("captions", [])):
                outputs.md(caption, name=f"caption_{i}")
                outputs.str(f"map_{i}", view=types.ImageView(width="100%"))
        return types.Property(outputs, view=types.View(label="Feature maps"))
