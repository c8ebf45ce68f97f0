"""Helpers shared by the plugin's operators."""

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
    from clustering.features import embeddings_fields

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
