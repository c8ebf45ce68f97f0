"""Helpers shared by the plugin's operators."""

import numbers

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types


def execute_from_sdk(operator, sample_collection, params, delegate=False):
    """Runs ``operator`` on ``sample_collection`` through FiftyOne's operator
    machinery, as ``foo.get_operator(uri)(samples, ...)`` does."""
    if isinstance(sample_collection, fo.DatasetView):
        ctx = dict(view=sample_collection)
    else:
        ctx = dict(dataset=sample_collection)
    params = {k: v for k, v in params.items() if v is not None}
    params["delegate"] = delegate
    return foo.execute_operator(operator.uri, ctx, params=params)


def add_delegate_input(inputs, default=False, description=None):
    """Adds the "run now / delegate" toggle to a form."""
    inputs.bool(
        "delegate",
        default=default,
        label="Delegate execution",
        description=description
        or (
            "Queue this operation to run in the background "
            "(`fiftyone delegated launch` executes it)"
        ),
        view=types.CheckboxView(),
    )


def progress_callback(ctx, label):
    """Returns ``progress(fraction, message)`` that drives the App's progress
    bar (``ctx.set_progress``), throttled to whole percents."""
    last = {"percent": -1}

    def progress(fraction, message=""):
        percent = int(100 * max(0.0, min(1.0, fraction)))
        if percent != last["percent"]:
            last["percent"] = percent
            text = f"{label}: {message}" if message else label
            ctx.set_progress(progress=percent / 100.0, label=text)

    return progress


def vector_fields(samples):
    """Names of the fields that can hold embeddings (vector, array and
    list-of-number fields): of the samples, and in a patches view also of its
    patches (e.g. ``ground_truth.embedding``)."""
    from clustering.features.transform import embeddings_fields

    return embeddings_fields(samples)


def run_keys(samples, method=None):
    """Keys of this plugin's clustering runs on ``samples``."""
    import clustering.runs as cr

    return cr.list_clustering_runs(samples, method=method)


def run_with_progress(ctx, label, work):
    """Generator helper for ``execute_as_generator`` operators.

    Runs ``work(progress)``; in delegated runs progress goes to
    ``ctx.set_progress``, in immediate App runs the work runs in a thread while
    this generator yields the App's progress-bar updates. Returns work's result
    (use ``result = yield from run_with_progress(...)``).
    """
    if ctx.delegated:
        return work(progress_callback(ctx, label))

    import queue
    import threading

    updates = queue.Queue()
    outcome = {}

    def target():
        try:
            outcome["result"] = work(lambda fraction, message="": updates.put((fraction, message)))
        except BaseException as e:  # re-raised in the caller's thread
            outcome["error"] = e
        finally:
            updates.put(None)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    last_percent = -1
    while True:
        item = updates.get()
        if item is None:
            break
        fraction, message = item
        percent = int(100 * max(0.0, min(1.0, fraction)))
        if percent != last_percent:
            last_percent = percent
            text = f"{label}: {message}" if message else label
            yield ctx.ops.set_progress(label=text, progress=percent / 100.0)
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def show_output(ctx, outputs, results):
    """Shows ``outputs`` (a ``types.Object``) filled with ``results`` in the App."""
    return ctx.ops.show_output(types.Property(outputs).to_json(), results)


def run_key_input(ctx, inputs, name="run_key", label="Clustering run", description=None, default=None):
    """Dropdown of this plugin's clustering runs (default: the newest); returns the chosen
    key or None."""
    keys = run_keys(ctx.dataset)
    if not keys:
        inputs.view(
            "no_runs",
            types.Warning(
                label="No clustering runs",
                description="Run `compute_clusters` on this dataset first",
            ),
        )
        return None
    default = default if default in keys else keys[-1]
    choices = types.DropdownView()
    for key in keys:
        choices.add_choice(key, label=key)
    inputs.enum(
        name,
        choices.values(),
        default=default,
        required=True,
        label=label,
        description=description,
        view=choices,
    )
    return ctx.params.get(name) or default


def add_plot(outputs, name, label, fig):
    """Adds a Plotly chart to ``outputs`` and returns the value to show. The
    App's PlotlyView takes the layout (and height) from the view and the list
    of traces as the property's value."""
    layout = dict(fig["layout"])
    outputs.list(
        name,
        types.Object(),
        label=label,
        view=types.PlotlyView(
            layout=layout,
            config={"displaylogo": False, "scrollZoom": False},
            height=layout.get("height", 340),
        ),
    )
    return fig["data"]


_REQUIRED = object()


class Params:
    """An operator's ``ctx.params`` read with the SDK's kind of messages: a
    missing required value or a value of the wrong type raises ``ValueError``
    naming the parameter, never ``KeyError`` or ``TypeError``. Integers may
    come as the strings that the forms' dropdowns hold.

    ``lenient=True`` (for ``resolve_input``, where the form is still being
    filled) reads a missing or malformed value as ``default`` instead, so that
    the form renders and FiftyOne's own validation names the field."""

    def __init__(self, params, lenient=False):
        self._params = params or {}
        self._lenient = lenient

    def _fail(self, name, default, message):
        if self._lenient:
            return None if default is _REQUIRED else default
        raise ValueError(message)

    def _value(self, name, default):
        value = self._params.get(name)
        if value is None or value == "":
            if default is _REQUIRED:
                return self._fail(name, default, f"Parameter '{name}' is required")
            return default
        return value

    def raw(self, name, default=None):
        """The value as given (None when absent)."""
        value = self._params.get(name)
        return default if value is None else value

    def str(self, name, default=_REQUIRED):
        value = self._value(name, default)
        if value is None or isinstance(value, str):
            return value
        return self._fail(name, default, f"Parameter '{name}' must be a string; got {value!r}")

    def int(self, name, default=_REQUIRED, minimum=None):
        value = self._value(name, default)
        if value is None:
            return None
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        elif isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            return self._fail(name, default, f"Parameter '{name}' must be an integer; got {value!r}")
        if minimum is not None and value < minimum:
            return self._fail(name, default, f"Parameter '{name}' must be >= {minimum}; got {value}")
        return int(value)

    def float(self, name, default=_REQUIRED, positive=False):
        value = self._value(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return self._fail(name, default, f"Parameter '{name}' must be a number; got {value!r}")
        if positive and not value > 0:
            return self._fail(name, default, f"Parameter '{name}' must be > 0; got {value}")
        return float(value)

    def bool(self, name, default=False):
        value = self._value(name, default)
        if value is None or isinstance(value, bool):
            return value
        return self._fail(name, default, f"Parameter '{name}' must be true or false; got {value!r}")

    def ints(self, name, default=_REQUIRED):
        """A list of integers."""
        value = self._value(name, default)
        if value is None or value is default:
            return value
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            return self._fail(name, default, f"Parameter '{name}' must be a list of integers; got {value!r}")
        items = [Params({name: v}, lenient=True).int(name, None) for v in value]
        if None in items:
            return self._fail(name, default, f"Parameter '{name}' must be a list of integers; got {value!r}")
        return items

    def strs(self, name, default=_REQUIRED):
        """A list of strings (one string is a list of one)."""
        value = self._value(name, default)
        if value is None or value is default:
            return value
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            return self._fail(name, default, f"Parameter '{name}' must be a list of strings; got {value!r}")
        return list(value)


def fmt(value, spec=".3f"):
    """A number for display ("n/a" for None)."""
    return "n/a" if value is None else format(value, spec)


def preprocessing_inputs(ctx, inputs, default="auto"):
    """Normalization and reduction before clustering (``default``: the
    reduction selected at first)."""
    inputs.bool("normalize", default=False, label="L2-normalize embeddings")
    reductions = types.RadioGroup(orientation="horizontal")
    for value, label in (
        ("auto", "Auto: UMAP to 5-d (cosine)"), ("none", "None"), ("pca", "PCA"), ("umap", "UMAP"),
    ):
        reductions.add_choice(value, label=label)
    inputs.enum(
        "reduction", reductions.values(), default=default, label="Reduce dimension before clustering",
        description=(
            "Auto clusters best on photo collections (see the README's defaults): UMAP to 5 dimensions "
            "with the cosine metric, fitted on up to 20,000 samples; none below 50 samples"
        ),
        view=reductions,
    )
    if ctx.params.get("reduction", default) in ("pca", "umap"):
        inputs.int("n_components", default=5 if ctx.params.get("reduction") == "umap" else 64, required=True, min=1,
                   label="Dimensions after reduction")


LOSS_PARAM_HELP = (
    "Leave empty for a data-driven {name} computed from the typical distance to the "
    "nearest center, far outliers left out, re-estimated as the centers settle (the "
    "value and the rule used are stored in the run's config). The source documents' "
    "1.0 is meaningless at embedding scale."
)


def method_inputs(ctx, inputs, method, only=None, loss_param_help=LOSS_PARAM_HELP):
    """The inputs of ``method``'s parameters (those named in ``only``, or all),
    from its ``form`` (:class:`clustering.engine.methods.MethodParam`) and
    ``defaults``; losses and their parameters from the loss registry."""
    import clustering

    form = Params(ctx.params, lenient=True)
    for param in method.form:
        if only is not None and param.name not in only:
            continue
        default = method.defaults.get(param.name)
        if param.kind == "loss":
            view = types.DropdownView()
            for name in clustering.available_losses():
                loss = clustering.get_loss(name)
                view.add_choice(name, label=loss.label or name, description=loss.summary)
            inputs.enum(param.name, view.values(), default=default, label=param.label, view=view)
        elif param.kind == "loss_param":
            name = form.str("loss", method.defaults.get("loss"))
            loss = clustering.get_loss(name) if name in clustering.available_losses() else None
            if loss is None or loss.param_name is None:
                continue
            prop = inputs.float(
                param.name, label=f"{loss.param_name} (optional)", description=loss_param_help.format(name=loss.param_name)
            )
            value = form.float(param.name, None)
            if value is not None and value <= 0:
                prop.invalid = True
                prop.error_message = f"{loss.param_name} must be > 0"
        elif param.kind == "choice":
            view = types.DropdownView() if len(param.choices) > 3 else types.RadioGroup(orientation="horizontal")
            for value in param.choices:
                view.add_choice(value, label=value)
            inputs.enum(param.name, view.values(), default=default, label=param.label, description=param.help, view=view)
        else:
            add = {"int": inputs.int, "float": inputs.float, "str": inputs.str, "bool": inputs.bool}[param.kind]
            kwargs = {"min": param.minimum} if param.minimum is not None else {}
            add(param.name, default=default, label=param.label, description=param.help, **kwargs)
