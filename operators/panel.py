"""The Clusters panel (``@imgclust/clustering/clusters_panel``): a run's
clusters beside the sample grid.

The panel is thin: its data comes from :mod:`clustering.runs.browse` (one
aggregation over the run's fields on open, kept while the run is unchanged so
that paging and sorting do not repeat it), the views it loads into the grid
from :func:`clustering.load_run_view`, its charts from :mod:`clustering.plots`
and :func:`clustering.compare_runs`, and every action is one of the plugin's
operators, opened from the panel with its form filled in (``ctx.prompt``);
after an action succeeds the panel reloads its data.

State (``ctx.panel.state``, kept when the grid's view changes): the choices
(run, ground truth, sort, page, tab, selected cluster, compared run, map) and
the rows it shows; data (``ctx.panel.data``): thumbnails and charts.
"""

import fiftyone.operators as foo
import fiftyone.operators.types as types

import clustering
from clustering.runs import browse
from clustering import plots
from clustering import runs as cr
from clustering.runs import PLUGIN

from .common import fmt

PAGE_SIZE = 10
#: the overviews of the runs the panel shows, computed again only when a run changes
OVERVIEWS = browse.OverviewCache()
NUM_OUTLIERS = 50
NO_GT = "none"
TABS = (("clusters", "Clusters"), ("charts", "Charts"), ("compare", "Compare runs"))

# each choice is kept under its own key, and its input shows it at its layout
# path; inputs also report their value when they appear, so a handler acts only
# when the value differs from the choice's
CHOICES = {
    "run_key": "controls.run_key",
    "gt_field": "controls.gt_field",
    "sort": "controls.sort",
    "tab": "tabs",
    "run_key_b": "compare.run_key_b",
}
MAP = "map_controls.brain_key"
# the input handlers and the choice each sets
INPUT_HANDLERS = {
    "on_change_run": "run_key",
    "on_change_gt": "gt_field",
    "on_change_sort": "sort",
    "on_change_tab": "tab",
    "on_change_compare": "run_key_b",
}


def _header_markdown(overview):
    h = overview["header"]
    loss = h["loss"] or "squared distance"
    if h["loss_param"] is not None:
        loss += f" ({fmt(h['loss_param'], '.4g')})"
    parts = [
        f"**{h['method']}**, loss {loss}",
        f"k = {h['k']}" if h["k"] is not None else None,
        f"{h['num_clusters']} clusters",
        f"{h['num_clustered']:,} samples clustered",
        f"{h['num_noise']:,} noise" if h["num_noise"] else None,
        f"objective {fmt(h['objective'], '.4g')}",
        f"stability {fmt(h['stability'], '.2f')}" if h.get("stability") is not None else None,
    ]
    text = " · ".join(p for p in parts if p)
    ev = overview["evaluation"]
    if ev:
        text += (
            f"  \nvs `{ev['gt_field']}` ({ev['num_evaluated']:,} samples): NMI {fmt(ev['nmi'])} · "
            f"ARI {fmt(ev['ari'])} · accuracy {fmt(ev['accuracy'])} · purity {fmt(ev['purity'])}"
        )
    return text


def _matching_markdown(run_a, run_b, cmp):
    """The clusters' identity across two runs: matched pairs, new and vanished."""
    lines = [
        f"**Cluster identity** ({len(cmp['matches'])} matched, {len(cmp['new'])} new in '{run_b}', "
        f"{len(cmp['vanished'])} vanished from '{run_a}')",
        "",
        f"| '{run_a}' | '{run_b}' | shared samples | Jaccard |",
        "|---|---|---|---|",
    ]
    lines += [f"| {m['a']} | {m['b']} | {m['shared']:,} | {m['jaccard']:.2f} |" for m in cmp["matches"]]
    lines += [f"| (vanished) {c} | | | |" for c in cmp["vanished"]]
    lines += [f"| | (new) {c} | | |" for c in cmp["new"]]
    return "\n".join(lines)


def _parent_of(row):
    """The cluster one level up of an overview row of a tree level (from its
    path, ``"7/2"`` -> 7), or None."""
    if not row or not row.get("path") or "/" not in row["path"]:
        return None
    return int(row["path"].split("/")[-2])


def _breadcrumb(dataset, overview, parent):
    """Where a tree level's browsed clusters sit: ``'t' › 7 (dogs) › sub-clusters``."""
    parent_run = overview["header"]["parent_run"]
    if parent is None:
        return f"Every sub-cluster of run `{parent_run}` (level {overview['header']['level']})"
    above = next((r for r in OVERVIEWS.get(dataset, parent_run)["clusters"] if r["cluster"] == parent), {})
    name = f" ({above['name']})" if above.get("name") else ""
    return f"`{parent_run}` › cluster **{parent}**{name} › its sub-clusters in `{overview['run_key']}`"


def _card_markdown(row):
    lines = [f"**{row['name']}**" if row.get("name") else None, f"{row['size']:,} samples", f"compactness {fmt(row['compactness'], '.4g')}"]
    if row.get("stability") is not None:
        doubtful = row["stability"] < browse.UNSTABLE_BELOW
        lines.append(f"{'⚠ unstable ' if doubtful else ''}stability {row['stability']:.2f}")
    if row.get("majority_class") is not None:
        lines.append(f"{row['majority_class']} ({100 * row['purity']:.0f}%)")
    return "  \n".join(line for line in lines if line)


class ClustersPanel(foo.Panel):
    @property
    def config(self):
        return foo.PanelConfig(
            name="clusters_panel",
            label="Clusters",
            icon="bubble_chart",
            surfaces="grid",
            help_markdown=(
                "A clustering run's clusters: click one to see it in the grid (nearest its "
                "center first); rename, merge, split, tag, name with an LLM, promote to labels."
            ),
        )

    # ------------------------------------------------------------------ events

    def on_load(self, ctx):
        keys = browse.run_keys(ctx.dataset)
        ctx.panel.set_state("run_keys", keys)
        if not keys:
            return
        if ctx.panel.get_state("run_key") not in keys:
            tops = [k for k in keys if not cr.get_clustering_run_config(ctx.dataset, k).parent_run]
            self._pick_run(ctx, (tops or keys)[-1])
            ctx.panel.set_state({"cluster": None, "page": 0, "map_note": None, "drill": None})
        if (ctx.panel.get_state("drill") or {}).get("run", keys[0]) not in keys:  # the level was deleted
            ctx.panel.set_state("drill", None)
        for key, default in (("gt_field", NO_GT), ("sort", "cluster"), ("tab", "clusters")):
            self._choose(ctx, key, ctx.panel.get_state(key) or default)
        self._load_run(ctx)
        # charts live in the panel's data, which a reload of the App empties
        tab = ctx.panel.get_state("tab")
        if tab == "compare" and ctx.panel.get_state("run_key_b") in keys:
            self._load_comparison(ctx)
        if tab == "charts" and ctx.panel.get_state("map_note"):
            self.load_map(ctx)

    def on_change_dataset(self, ctx):
        ctx.panel.set_state("run_key", None)
        self.on_load(ctx)

    def execute(self, ctx):
        # an input also reports its value when it appears (with the state of
        # that moment): unchanged, there is nothing to do or to redraw
        key = INPUT_HANDLERS.get(ctx.params.get("__method__"))
        value = ctx.params.get("value")
        if key and (value in (None, "") or value == ctx.panel.get_state(key)):
            return None
        return super().execute(ctx)

    def _choose(self, ctx, key, value):
        """Sets choice ``key`` and the input that shows it."""
        ctx.panel.set_state({key: value, CHOICES[key]: value})

    def _pick_run(self, ctx, run_key):
        """Shows run ``run_key``, scored against the ground-truth field it was
        last evaluated against (if any; otherwise the current choice stays)."""
        self._choose(ctx, "run_key", run_key)
        self._choose(ctx, "run_key_b", None)
        evaluated = browse.evaluated_field(ctx.dataset, run_key)
        if evaluated:
            self._choose(ctx, "gt_field", evaluated)

    def on_change_run(self, ctx):
        self._pick_run(ctx, ctx.params["value"])
        ctx.panel.set_state({"cluster": None, "page": 0, "cards": {}, "map_note": None, "drill": None})
        ctx.panel.data.clear()
        self._load_run(ctx)
        if ctx.panel.get_state("tab") == "compare":
            self._load_comparison(ctx)

    def on_change_gt(self, ctx):
        self._choose(ctx, "gt_field", ctx.params["value"])
        self._load_run(ctx)

    def on_change_sort(self, ctx):
        self._choose(ctx, "sort", ctx.params["value"])
        ctx.panel.set_state("page", 0)
        self._load_run(ctx)

    def on_change_tab(self, ctx):
        self._choose(ctx, "tab", ctx.params["value"])
        if ctx.params["value"] == "compare":
            self._load_comparison(ctx)

    def on_change_compare(self, ctx):
        self._choose(ctx, "run_key_b", ctx.params["value"])
        self._load_comparison(ctx)

    def refresh(self, ctx):
        OVERVIEWS.clear()  # e.g. ground truth edited: everything is read again
        self.on_load(ctx)

    def compute(self, ctx):
        ctx.prompt(f"{PLUGIN}/compute_clusters", on_success=self.refresh)

    def next_page(self, ctx):
        ctx.panel.set_state("page", (ctx.panel.get_state("page") or 0) + 1)
        self._load_run(ctx)

    def previous_page(self, ctx):
        ctx.panel.set_state("page", max(0, (ctx.panel.get_state("page") or 0) - 1))
        self._load_run(ctx)

    # -------------------------------------------------------- views in the grid

    def _run_key(self, ctx):
        """The run the panel shows: the one picked, or the level of a cluster
        tree it drilled into."""
        drill = ctx.panel.get_state("drill")
        return drill["run"] if drill else ctx.panel.get_state("run_key")

    def show_cluster(self, ctx):
        """A card, a thumbnail or a bar of the sizes chart was clicked."""
        self._show(ctx, ctx.params.get("cluster", ctx.params.get("x")))

    def _show(self, ctx, cluster):
        """Selects ``cluster``; the grid shows it, nearest its center first."""
        cluster = int(cluster)
        ctx.panel.set_state("cluster", cluster)
        ctx.ops.set_view(clustering.load_run_view(ctx.dataset, self._run_key(ctx), cluster=cluster))

    # ------------------------------------------------------------ the tree

    def drill_down(self, ctx):
        """A card's sub-clusters: the panel shows the level below, those of
        this cluster; the grid shows the cluster."""
        cluster = int(ctx.params["cluster"])
        below = cr.child_runs(ctx.dataset, self._run_key(ctx))
        if below:
            self._enter_level(ctx, below[0], cluster)

    def _enter_level(self, ctx, level_key, parent):
        """Shows the sub-clusters of ``parent`` in ``level_key`` (the Run
        input keeps the run picked: the drill-down is the panel's ``drill``)."""
        parent_run = self._run_key(ctx)
        ctx.panel.set_state({"drill": {"run": level_key, "cluster": parent}, "cluster": None, "page": 0, "cards": {}})
        self._load_run(ctx)
        ctx.ops.set_view(clustering.load_run_view(ctx.dataset, parent_run, cluster=parent))

    def go_up(self, ctx):
        """Back to the level above: its clusters (the siblings of the one
        browsed), with that one selected and shown in the grid."""
        run_key = self._run_key(ctx)
        parent_run = cr.get_clustering_run_config(ctx.dataset, run_key).parent_run
        parent = self._parent(ctx)
        if not parent_run:
            return
        above = next((r for r in OVERVIEWS.get(ctx.dataset, parent_run)["clusters"] if r["cluster"] == parent), None)
        grandparent = _parent_of(above)
        drill = {"run": parent_run, "cluster": grandparent} if parent_run != ctx.panel.get_state("run_key") else None
        ctx.panel.set_state({"drill": drill, "page": 0, "cards": {}})
        self._load_run(ctx)
        if parent is not None:
            self._show(ctx, parent)

    def _parent(self, ctx):
        """The cluster whose sub-clusters the panel shows, or None."""
        drill = ctx.panel.get_state("drill")
        return drill["cluster"] if drill else None

    def subcluster(self, ctx):
        self._prompt(ctx, "subcluster", on_success=self.subcluster_done, cluster=str(ctx.panel.get_state("cluster")))

    def subcluster_done(self, ctx):
        """Sub-clustered: the panel shows the new sub-clusters."""
        result = ctx.params["result"]
        OVERVIEWS.clear()
        self._enter_level(ctx, result["run_key"], int(result["parent"]))

    def show_representatives(self, ctx):
        ctx.ops.set_view(clustering.load_run_view(ctx.dataset, self._run_key(ctx), representatives=True))

    def show_outliers(self, ctx):
        cluster = ctx.panel.get_state("cluster")
        ctx.ops.set_view(clustering.load_run_view(ctx.dataset, self._run_key(ctx), cluster=cluster, outliers=NUM_OUTLIERS))

    def clear(self, ctx):
        ctx.panel.set_state("cluster", None)
        ctx.ops.clear_view()

    def show_pair(self, ctx):
        """A cell of the comparison heatmap: y = cluster of this run, x = of the other."""
        run_b = ctx.panel.get_state("run_key_b")
        view = browse.pair_view(ctx.dataset, self._run_key(ctx), int(ctx.params["y"]), run_b, int(ctx.params["x"]))
        ctx.ops.set_view(view)

    def show_selected_points(self, ctx):
        """Points lassoed on the map: the grid shows those samples."""
        ids = [p["id"] for p in ctx.params.get("data") or [] if p.get("id")]
        if ids:
            ctx.ops.set_view(ctx.dataset.select(ids))

    # ------------------------------------------------------------ charts, compare

    def _load_comparison(self, ctx):
        """The contingency heatmap of this run against the compared one (the
        first other run unless one is chosen)."""
        run_a = self._run_key(ctx)
        run_b = ctx.panel.get_state("run_key_b")
        if run_b in (None, run_a):
            others = [k for k in ctx.panel.get_state("run_keys") or [] if k != run_a]
            if not others:
                return
            run_b = others[0]
            self._choose(ctx, "run_key_b", run_b)
        try:
            cmp = clustering.compare_runs(ctx.dataset, run_a, run_b)
        except ValueError as e:  # e.g. a run on patches
            ctx.panel.set_state({"compare_summary": f"Cannot compare: {e}", "heatmap_layout": None})
            return
        figure = plots.heatmap_figure(cmp["contingency"], f"'{run_a}' vs '{run_b}'", f"cluster of '{run_b}'", f"cluster of '{run_a}'")
        ctx.panel.set_state(
            {
                "compare_summary": (
                    f"ARI {cmp['ari']:.3f} · NMI {cmp['nmi']:.3f} · {cmp['num_compared']:,} samples compared, "
                    f"{cmp['num_changed']:,} change cluster. Click a cell to see its samples."
                ),
                "matching": _matching_markdown(run_a, run_b, cmp),
                "heatmap_layout": figure["layout"],
            }
        )
        ctx.panel.data.set("heatmap", figure["data"])

    def load_map(self, ctx):
        brain_key = ctx.panel.get_state(MAP) or (ctx.panel.get_state("map_keys") or [None])[0]
        if not brain_key:
            return
        figure, n = browse.map_chart(ctx.dataset, self._run_key(ctx), brain_key)
        ctx.panel.set_state("map_layout", dict(figure["layout"], dragmode="lasso"))
        ctx.panel.set_state("map_note", f"{n:,} points. Lasso points to show those samples in the grid.")
        ctx.panel.data.set("map", figure["data"])

    def open_embeddings(self, ctx):
        ctx.ops.open_panel("Embeddings", layout="horizontal", is_active=True)

    # ---------------------------------------------------------------- actions

    def _prompt(self, ctx, operator, on_success=None, **params):
        """Opens ``operator``'s form filled with ``params`` and the run."""
        ctx.prompt(
            f"{PLUGIN}/{operator}",
            params=dict(params, run_key=self._run_key(ctx)),
            on_success=on_success or self.action_done,
            on_error=self.action_failed,
        )

    def _picked(self, ctx):
        cards = ctx.panel.get_state("cards") or {}
        return sorted(int(k[1:]) for k, v in cards.items() if isinstance(v, dict) and v.get("pick"))

    def rename(self, ctx):
        self._prompt(ctx, "set_cluster_name", cluster=str(ctx.panel.get_state("cluster")))

    def split(self, ctx):
        self._prompt(ctx, "split_cluster", on_success=self.split_done, cluster=str(ctx.panel.get_state("cluster")), k=2)

    def tag(self, ctx):
        self._prompt(ctx, "tag_cluster", cluster=str(ctx.panel.get_state("cluster")), view_target="DATASET")

    def merge(self, ctx):
        """The merge form, filled with the checked clusters (or the selected one)."""
        picked = self._picked(ctx)
        cluster = ctx.panel.get_state("cluster")
        if not picked and cluster is not None:
            picked = [cluster]
        self._prompt(ctx, "merge_clusters", on_success=self.merge_done, clusters=[str(c) for c in picked])

    def name_with_llm(self, ctx):
        self._prompt(ctx, "label_clusters")

    def promote(self, ctx):
        self._prompt(ctx, "clusters_to_labels", view_target="DATASET")

    def assign_new(self, ctx):
        self._prompt(ctx, "assign_new_samples", view_target="DATASET")

    def action_done(self, ctx):
        """An action's operator succeeded: the checks are cleared, the data reloaded."""
        for c in self._picked(ctx):
            ctx.panel.set_state(f"cards.c{c}.pick", False)
        self.on_load(ctx)

    def merge_done(self, ctx):
        """Merged: the grid shows the merged cluster."""
        self.action_done(ctx)
        self._show(ctx, ctx.params["result"]["cluster"])

    def split_done(self, ctx):
        """Split: the grid shows the first new cluster."""
        self.action_done(ctx)
        self._show(ctx, ctx.params["result"]["clusters"][0])

    def repair(self, ctx):
        """Finishes an interrupted write (``clustering.check_run(repair=True)``)."""
        try:
            report = clustering.check_run(ctx.dataset, self._run_key(ctx), repair=True)
        except clustering.RunBusyError as e:
            ctx.ops.notify(str(e), variant="warning")
            return
        done = "; ".join(report["repaired"] or ["nothing to repair"])
        ctx.ops.notify(f"Run '{self._run_key(ctx)}': {done}", variant="success")
        self.on_load(ctx)
        ctx.ops.reload_dataset()

    def action_failed(self, ctx):
        ctx.ops.notify(str(ctx.params.get("error")), variant="error")

    # ------------------------------------------------------------------ data

    def _load_run(self, ctx):
        run_key = self._run_key(ctx)
        gt = ctx.panel.get_state("gt_field")
        fields = browse.ground_truth_fields(ctx.dataset)
        if gt not in fields:
            if gt != NO_GT:
                self._choose(ctx, "gt_field", NO_GT)
            gt = None
        overview = OVERVIEWS.get(ctx.dataset, run_key, gt_field=gt)
        rows = overview["clusters"]
        parent = self._parent(ctx)
        if overview["header"]["parent_run"] and parent is not None:  # a cluster's sub-clusters
            rows = [r for r in rows if _parent_of(r) == parent]
        below = cr.child_runs(ctx.dataset, run_key)
        children = {}
        for r in OVERVIEWS.get(ctx.dataset, below[0])["clusters"] if below else ():
            children[_parent_of(r)] = children.get(_parent_of(r), 0) + 1
        rows = [dict(r, children=children.get(r["cluster"], 0)) for r in rows]
        rows = browse.sort_clusters(rows, ctx.panel.get_state("sort") or "cluster")
        pages = max(1, -(-len(rows) // PAGE_SIZE))
        page = min(ctx.panel.get_state("page") or 0, pages - 1)
        shown = rows[page * PAGE_SIZE : (page + 1) * PAGE_SIZE]
        ctx.panel.set_state(
            {
                "header": _header_markdown(overview),
                "breadcrumb": _breadcrumb(ctx.dataset, overview, parent) if overview["header"]["parent_run"] else None,
                "problem": overview["problem"],
                "page": page,
                "num_pages": pages,
                "rows": [{k: v for k, v in r.items() if k != "thumbnails"} | {"n": len(r["thumbnails"])} for r in shown],
                "noise": overview["noise"],
                "is_patches": bool(overview["header"]["patches_field"]),
                "gt_fields": [] if overview["header"]["patches_field"] else fields,
                "map_keys": [] if overview["header"]["patches_field"] else browse.map_keys(ctx.dataset, run_key),
            }
        )
        sizes = plots.sizes_figure(overview)
        ctx.panel.set_state("sizes_layout", sizes["layout"])
        ctx.panel.data.set(
            {
                "cards": {f"c{r['cluster']}": {f"t{i}": t["url"] for i, t in enumerate(r["thumbnails"])} for r in shown},
                "sizes": sizes["data"],
            }
        )

    # ---------------------------------------------------------------- render

    def render(self, ctx):
        panel = types.Object()
        state = ctx.panel.state
        keys = state.run_keys or []
        if not keys:
            panel.md(
                "**No clustering runs on this dataset yet.** Compute one; a delegated run appears "
                "here once it is done and the panel is refreshed.",
                name="empty",
            )
            buttons = panel.h_stack("empty_actions", gap=1)
            buttons.btn("compute", label="Compute clusters", icon="bubble_chart", variant="contained", on_click=self.compute)
            buttons.btn("refresh", label="Refresh", icon="refresh", on_click=self.refresh)
            return types.Property(panel, view=types.GridView(orientation="vertical", gap=2, pad=2))

        self._render_controls(ctx, panel, keys)
        panel.md(state.header or "", name="header")
        if state.breadcrumb:
            where = panel.h_stack("tree", gap=1, align_y="center")
            where.btn("up", label="Up", icon="arrow_upward", variant="outlined", on_click=self.go_up)
            where.md(state.breadcrumb, name="breadcrumb")
        if state.problem:
            problem = panel.h_stack("problem", gap=1, align_y="center")
            problem.view("text", types.Warning(label="This run needs attention", description=state.problem))
            problem.btn("repair", label="Repair", icon="build", variant="contained", on_click=self.repair)
        tabs = types.TabsView()
        for value, label in TABS:
            tabs.add_choice(value, label=label)
        panel.enum(CHOICES["tab"], tabs.values(), default="clusters", view=tabs, on_change=self.on_change_tab)
        tab = ctx.panel.get_state("tab") or "clusters"
        if tab == "clusters":
            self._render_clusters(ctx, panel)
        elif tab == "charts":
            self._render_charts(ctx, panel)
        else:
            self._render_compare(ctx, panel, keys)
        return types.Property(panel, view=types.GridView(orientation="vertical", gap=1, pad=1))

    def _render_controls(self, ctx, panel, keys):
        controls = panel.h_stack("controls", gap=2, align_y="center")
        runs = types.DropdownView(label="Run")
        for k in keys:
            runs.add_choice(k, label=k)
        controls.enum("run_key", runs.values(), view=runs, on_change=self.on_change_run)
        if not ctx.panel.get_state("is_patches"):
            gts = types.DropdownView(label="Ground truth")
            gts.add_choice(NO_GT, label="(none)")
            for f in ctx.panel.get_state("gt_fields") or []:
                gts.add_choice(f, label=f)
            controls.enum("gt_field", gts.values(), default=NO_GT, view=gts, on_change=self.on_change_gt)
        sorts = types.DropdownView(label="Sort")
        for value, (label, _, _) in browse.SORTS.items():
            sorts.add_choice(value, label=label)
        controls.enum("sort", sorts.values(), default="cluster", view=sorts, on_change=self.on_change_sort)
        # runs computed elsewhere (delegated, the SDK) and edits made there
        controls.view("refresh", types.IconButtonView(icon="refresh", operator=self.refresh, title="Reload the runs and clusters"))

    def _render_clusters(self, ctx, panel):
        state = ctx.panel.state
        buttons = panel.h_stack("views", gap=1, align_y="center")
        buttons.btn("representatives", label="All representatives", icon="star", on_click=self.show_representatives)
        cluster = state.cluster
        outliers = f"Outliers of {cluster}" if cluster is not None else "Outliers"
        buttons.btn("outliers", label=outliers, icon="scatter_plot", on_click=self.show_outliers)
        buttons.btn("clear", label="Clear", icon="clear", on_click=self.clear)

        # naming, tagging, labels and assigning from the panel are for runs on images
        images = not state.is_patches
        if cluster is not None and cluster >= 0:
            actions = panel.h_stack("actions", gap=1, align_y="center")
            actions.md(f"**Cluster {cluster}**", name="selected")
            if images:
                actions.btn("rename", label="Rename", icon="edit", on_click=self.rename)
            actions.btn("split", label="Split", icon="call_split", on_click=self.split)
            if images:
                actions.btn("subcluster", label="Sub-cluster", icon="account_tree", on_click=self.subcluster)
            if images:
                actions.btn("tag", label="Tag", icon="local_offer", on_click=self.tag)
        run_actions = panel.h_stack("run_actions", gap=1, align_y="center")
        run_actions.btn("merge", label="Merge checked", icon="merge", on_click=self.merge)
        if images:
            run_actions.btn("llm", label="Name with LLM", icon="auto_awesome", on_click=self.name_with_llm)
            run_actions.btn("promote", label="To labels", icon="label", on_click=self.promote)
            run_actions.btn("assign", label="Assign new", icon="group_add", on_click=self.assign_new)

        noise = state.noise
        if noise:
            row = panel.h_stack("noise_row", gap=2, align_y="center")
            row.md(f"**Noise (-1)**: {noise['size']:,} samples (HDBSCAN)", name="text")
            row.btn("show", label="Show", on_click=self.show_cluster, params={"cluster": -1})

        cards = panel.v_stack("cards", gap=1)
        for r in state.rows or []:
            c = r["cluster"]
            card = cards.h_stack(f"c{c}", gap=1, align_y="center")
            card.bool("pick", label="", view=types.CheckboxView())
            card.btn("show", label=str(c), variant="outlined", on_click=self.show_cluster, params={"cluster": c})
            card.md(_card_markdown(r), name="text", width="150px")
            if r.get("children"):
                card.btn("down", label=f"{r['children']} sub-clusters", icon="subdirectory_arrow_right",
                         variant="outlined", on_click=self.drill_down, params={"cluster": c})
            for i in range(r["n"]):
                card.view(
                    f"t{i}",
                    types.ImageView(height="52px", width="52px", operator=self.show_cluster, params={"cluster": c}),
                )
        page, pages = (state.page or 0), (state.num_pages or 1)
        if pages > 1:
            pager = panel.h_stack("pager", gap=1, align_y="center")
            pager.btn("prev", label="Previous", disabled=page == 0, on_click=self.previous_page)
            pager.md(f"page {page + 1} of {pages}", name="position")
            pager.btn("next", label="Next", disabled=page >= pages - 1, on_click=self.next_page)

    def _render_charts(self, ctx, panel):
        state = ctx.panel.state
        panel.plot("sizes", layout=state.sizes_layout or {}, on_click=self.show_cluster, height="380px")
        keys = state.map_keys or []
        if state.is_patches:
            panel.md("The map shows runs on images only.", name="no_map")
            return
        if not keys:
            panel.md(
                "No 2-d map yet: run **Visualize run** (or `clustering.visualize_run`) to draw one.",
                name="no_map",
            )
            return
        controls = panel.h_stack("map_controls", gap=2, align_y="center")
        maps = types.DropdownView(label="Map")
        for k in keys:
            maps.add_choice(k, label=k)
        controls.enum("brain_key", maps.values(), default=keys[0], view=maps)
        controls.btn("load", label="Show map", icon="scatter_plot", on_click=self.load_map)
        controls.btn("embeddings", label="Open Embeddings panel", icon="open_in_new", on_click=self.open_embeddings)
        if state.map_note:
            panel.md(state.map_note, name="map_note")
            panel.plot("map", layout=state.map_layout or {}, on_selected=self.show_selected_points, height="480px")

    def _render_compare(self, ctx, panel, keys):
        state = ctx.panel.state
        others = [k for k in keys if k != self._run_key(ctx)]
        if not others:
            panel.md("Only one clustering run: compute another to compare.", name="no_compare")
            return
        compare = panel.h_stack("compare", gap=2, align_y="center")
        runs = types.DropdownView(label="Compare with")
        for k in others:
            runs.add_choice(k, label=k)
        compare.enum("run_key_b", runs.values(), view=runs, on_change=self.on_change_compare)
        if ctx.panel.get_state("run_key_b") and state.compare_summary:
            panel.md(state.compare_summary, name="compare_summary")
            if state.heatmap_layout:
                panel.plot("heatmap", layout=state.heatmap_layout, on_click=self.show_pair, height="480px")
            if state.matching:
                panel.md(state.matching, name="matching")
