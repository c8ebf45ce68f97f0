"""Operators that manage clustering runs: info, load a view, rename, delete."""

import json

import fiftyone.operators as foo
import fiftyone.operators.types as types

import clustering

from .common import Params, execute_from_sdk, run_key_input, show_output


def _config(name, label, description, dynamic=True):
    return foo.OperatorConfig(
        name=name,
        label=label,
        description=description,
        dynamic=dynamic,
        allow_immediate_execution=True,
        allow_delegated_execution=False,
    )


class GetRunInfo(foo.Operator):
    @property
    def config(self):
        return _config("get_run_info", "Clustering run info", "Config and summary of a clustering run")

    def __call__(self, sample_collection, run_key):
        return execute_from_sdk(self, sample_collection, {"run_key": run_key}).result

    def resolve_input(self, ctx):
        inputs = types.Object()
        run_key_input(ctx, inputs)
        return types.Property(inputs, view=types.View(label="Clustering run info"))

    def execute(self, ctx):
        info = clustering.get_run_info(ctx.dataset, Params(ctx.params).str("run_key"))
        return json.loads(json.dumps(info, default=str))

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("run_key", label="Run key")
        outputs.str("status", label="Status")
        outputs.str("timestamp", label="Created")
        outputs.obj("config", label="Config", view=types.JSONView())
        outputs.obj("summary", label="Summary", view=types.JSONView())
        outputs.obj("timings", label="Timings (s)", view=types.JSONView())
        return types.Property(outputs)


class LoadRunView(foo.Operator):
    @property
    def config(self):
        return _config("load_run_view", "Load clustering view", "Show a cluster, the representatives or the outliers of a run")

    def __call__(self, sample_collection, run_key, mode="all", cluster=None, outliers=20):
        params = dict(run_key=run_key, mode=mode, cluster=cluster, outliers=outliers)
        return execute_from_sdk(self, sample_collection, params).result

    def resolve_input(self, ctx):
        inputs = types.Object()
        run_key = run_key_input(ctx, inputs)
        if run_key is None:
            return types.Property(inputs)
        modes = types.RadioGroup()
        modes.add_choice("all", label="All clustered samples, by cluster then loss")
        modes.add_choice("cluster", label="One cluster, sorted by loss to its center")
        modes.add_choice("representatives", label="Representatives of every cluster (rank 1..N)")
        modes.add_choice("outliers", label="Outliers: largest loss to their center")
        inputs.enum("mode", modes.values(), default="all", label="Show", view=modes)
        mode = ctx.params.get("mode", "all")
        if mode in ("cluster", "outliers"):
            results = clustering.load_clustering_results(ctx.dataset, run_key)
            ids = [str(c) for c in results.cluster_ids()]
            choices = types.DropdownView()
            for c in ids:
                choices.add_choice(c, label=f"cluster {c} ({int(results.cluster_sizes[int(c)])} samples)")
            inputs.enum("cluster", choices.values(), required=mode == "cluster", label="Cluster", view=choices)
        if mode == "outliers":
            inputs.int("outliers", default=20, min=1, label="How many")
        return types.Property(inputs, view=types.View(label="Load clustering view"))

    def execute(self, ctx):
        p = Params(ctx.params)
        mode = p.str("mode", "all")
        view = clustering.load_run_view(
            ctx.dataset,
            p.str("run_key"),
            cluster=p.int("cluster", None),
            representatives=mode == "representatives",
            outliers=p.int("outliers", 20, minimum=1) if mode == "outliers" else None,
        )
        ctx.ops.set_view(view)
        return {"num_samples": len(view)}


class RenameRun(foo.Operator):
    @property
    def config(self):
        return _config("rename_run", "Rename clustering run", "Rename a clustering run and its fields")

    def __call__(self, sample_collection, run_key, new_run_key):
        return execute_from_sdk(self, sample_collection, {"run_key": run_key, "new_run_key": new_run_key}).result

    def resolve_input(self, ctx):
        inputs = types.Object()
        if run_key_input(ctx, inputs) is None:
            return types.Property(inputs)
        prop = inputs.str("new_run_key", required=True, label="New run key")
        new_key = Params(ctx.params, lenient=True).str("new_run_key", None)
        if new_key and not new_key.isidentifier():
            prop.invalid = True
            prop.error_message = "Use letters, digits and underscores, not starting with a digit"
        elif new_key and new_key in ctx.dataset.list_runs():
            prop.invalid = True
            prop.error_message = f"A run '{new_key}' already exists"
        return types.Property(inputs, view=types.View(label="Rename clustering run"))

    def execute(self, ctx):
        p = Params(ctx.params)
        new_key = p.str("new_run_key")
        fields = clustering.rename_run(ctx.dataset, p.str("run_key"), new_key)
        ctx.ops.reload_dataset()
        return {"run_key": new_key, "fields": fields}


class DeleteRun(foo.Operator):
    @property
    def config(self):
        return _config("delete_run", "Delete clustering run", "Delete a clustering run, its results and its fields")

    def __call__(self, sample_collection, run_key):
        return execute_from_sdk(self, sample_collection, {"run_key": run_key}).result

    def resolve_input(self, ctx):
        inputs = types.Object()
        run_key = run_key_input(ctx, inputs)
        if run_key is not None:
            inputs.view(
                "warning",
                types.Warning(label="This deletes the run's fields from every sample of the dataset"),
            )
        return types.Property(inputs, view=types.View(label="Delete clustering run"))

    def execute(self, ctx):
        run_key = Params(ctx.params).str("run_key")
        fields = clustering.delete_run(ctx.dataset, run_key)
        ctx.ops.reload_dataset()
        return {"deleted_run": run_key, "deleted_fields": sorted(fields.values())}


class CheckRun(foo.Operator):
    """Params: ``run_key``, ``repair`` (default False). Returns
    :func:`clustering.check_run`'s report."""

    @property
    def config(self):
        return _config("check_run", "Check clustering run", "Check that a run's fields equal its results; repair an interrupted write")

    def __call__(self, sample_collection, run_key, repair=False):
        return execute_from_sdk(self, sample_collection, {"run_key": run_key, "repair": repair}).result

    def resolve_input(self, ctx):
        inputs = types.Object()
        if run_key_input(ctx, inputs) is not None:
            inputs.bool(
                "repair", default=False, label="Repair",
                description="Finish an interrupted write and rewrite the run's fields from its results",
            )
        return types.Property(inputs, view=types.View(label="Check clustering run"))

    def execute(self, ctx):
        p = Params(ctx.params)
        report = clustering.check_run(ctx.dataset, p.str("run_key"), repair=p.bool("repair"))
        if report.get("repaired"):
            ctx.ops.reload_dataset()
        report["summary"] = "\n".join(f"- {line}" for line in report["problems"]) or "Consistent: its fields equal its results"
        return json.loads(json.dumps(report, default=str))

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("state", label="State")
        outputs.str("summary", label="Problems", view=types.MarkdownView())
        outputs.list("repaired", types.String(), label="Repaired")
        return types.Property(outputs)
