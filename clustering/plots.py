"""Plotly figures (as plain JSON dicts) for the evaluation results.

Each function takes the dict returned by a function of
:mod:`clustering.runs.evaluation` and returns ``{"data": [...], "layout": {...}}``:
what ``types.PlotlyView`` renders in the App, and what
``plotly.graph_objects.Figure(fig)`` turns into a figure in a notebook.
No FiftyOne import.
"""

import numpy as np

_HIGHLIGHT = "#d62728"
_PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
    "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896",
    "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
]


def color(i):
    return _PALETTE[int(i) % len(_PALETTE)]


def _layout(title, xtitle, ytitle, **extra):
    layout = {
        "title": {"text": title},
        "xaxis": {"title": {"text": xtitle}},
        "yaxis": {"title": {"text": ytitle}},
        "margin": {"l": 60, "r": 20, "t": 50, "b": 50},
        "height": 340,
        "showlegend": False,
    }
    layout.update(extra)
    return layout


def _vline(x, text):
    return {
        "type": "line", "xref": "x", "yref": "paper", "x0": x, "x1": x, "y0": 0, "y1": 1,
        "line": {"color": _HIGHLIGHT, "dash": "dash", "width": 1},
    }, {"x": x, "y": 1, "xref": "x", "yref": "paper", "text": text, "showarrow": False, "yanchor": "bottom", "font": {"color": _HIGHLIGHT}}


def _metric_vs_k(sweep, key, title, ytitle, best_k, best_label):
    ks = sweep["metrics"]["k"]
    ys = sweep["metrics"][key]
    pts = [(k, y) for k, y in zip(ks, ys) if y is not None]
    data = [
        {
            "type": "scatter", "mode": "lines+markers", "name": ytitle,
            "x": [p[0] for p in pts], "y": [p[1] for p in pts],
            "hovertemplate": "k=%{x}<br>" + ytitle + "=%{y:.4g}<extra></extra>",
        }
    ]
    if best_k is not None and best_k in ks and ys[ks.index(best_k)] is not None:
        data.append(
            {
                "type": "scatter", "mode": "markers+text", "name": best_label,
                "x": [best_k], "y": [ys[ks.index(best_k)]], "text": [best_label], "textposition": "top center",
                "marker": {"size": 14, "color": "rgba(0,0,0,0)", "line": {"color": _HIGHLIGHT, "width": 2}},
            }
        )
    layout = _layout(title, "number of clusters k", ytitle)
    layout["xaxis"]["dtick"] = 1
    rec = sweep.get("recommended_k")
    if rec is not None:
        shape, note = _vline(rec, f"recommended k={rec}")
        layout["shapes"] = [shape]
        layout["annotations"] = [note]
    return {"data": data, "layout": layout}


def elbow_figure(sweep):
    """Objective (sum of per-sample losses) vs k, with the knee circled."""
    loss = sweep.get("loss") or "squared"
    return _metric_vs_k(
        sweep, "objective", f"Elbow: objective vs k ({sweep.get('method')}, loss {loss})",
        "objective", sweep["best"].get("elbow"), "knee",
    )


def silhouette_vs_k_figure(sweep):
    return _metric_vs_k(
        sweep, "silhouette", f"Mean silhouette vs k (higher is better; {sweep.get('silhouette_metric')})",
        "silhouette", sweep["best"].get("silhouette"), "max",
    )


def davies_bouldin_figure(sweep):
    return _metric_vs_k(
        sweep, "davies_bouldin", "Davies-Bouldin index vs k (lower is better)",
        "Davies-Bouldin", sweep["best"].get("davies_bouldin"), "min",
    )


def calinski_harabasz_figure(sweep):
    return _metric_vs_k(
        sweep, "calinski_harabasz", "Calinski-Harabasz index vs k (higher is better)",
        "Calinski-Harabasz", sweep["best"].get("calinski_harabasz"), "max",
    )


def stability_figure(sweep):
    return _metric_vs_k(
        sweep, "stability", "Stability vs k (ARI of fits on 80% subsamples with the full fit; "
        "higher is better)", "stability", sweep["best"].get("stability"), "max",
    )


def gap_figure(sweep):
    """Gap statistic vs k with one standard error bars, the 1-SE choice circled."""
    fig = _metric_vs_k(
        sweep, "gap", "Gap statistic vs k (the smallest k within one standard error of the "
        "next k's gap)", "gap", sweep["best"].get("gap"), "1-SE",
    )
    errors = [e for g, e in zip(sweep["metrics"]["gap"], sweep["metrics"]["gap_se"]) if g is not None]
    fig["data"][0]["error_y"] = {"type": "data", "array": errors, "visible": True}
    return fig


CRITERION_LABELS = {
    "elbow": "elbow", "silhouette": "silhouette", "davies_bouldin": "Davies-Bouldin",
    "calinski_harabasz": "Calinski-Harabasz", "stability": "stability", "gap": "gap",
}


def criteria_figure(sweep):
    """Which k each criterion picks: one bar per k, as high as the number of
    criteria that pick it and labeled with their names; the recommended k in red."""
    ks = sweep["metrics"]["k"]
    picked = {k: [CRITERION_LABELS.get(c, c) for c, v in sweep["best"].items() if v == k] for k in ks}
    rec = sweep.get("recommended_k")
    data = [
        {
            "type": "bar", "x": ks, "y": [len(picked[k]) for k in ks],
            "text": ["<br>".join(picked[k]) for k in ks], "textposition": "inside", "textangle": 0,
            "insidetextanchor": "middle",
            "marker": {"color": [_HIGHLIGHT if k == rec else color(0) for k in ks]},
            "hovertemplate": "k=%{x}: %{y} criteria<br>%{text}<extra></extra>",
        }
    ]
    layout = _layout(f"Criteria that pick each k (recommended k={rec})", "number of clusters k",
                     "criteria")
    layout["xaxis"]["dtick"] = 1
    layout["yaxis"].update({"dtick": 1, "range": [0, len(sweep["best"]) + 0.5]})
    return {"data": data, "layout": layout}


def silhouette_knife_figure(analysis):
    """The classic per-cluster silhouette plot: each cluster's (sampled)
    silhouettes sorted and drawn as a filled horizontal band, clusters stacked,
    with the overall mean as a dashed vertical line."""
    data = []
    tickvals, ticktext = [], []
    y0 = 0
    gap = max(2, int(0.02 * sum(len(c["values"]) for c in analysis["clusters"])))
    for i, c in enumerate(analysis["clusters"]):
        v = np.sort(np.asarray(c["values"], dtype=float))
        if not len(v):
            continue
        ys = (y0 + np.arange(len(v))).tolist()
        label = f"{c['cluster']}" + (f" {c['name']}" if c.get("name") else "")
        data.append(
            {
                "type": "scatter", "mode": "lines", "fill": "tozerox", "name": f"cluster {label}",
                "x": v.tolist(), "y": ys, "line": {"color": color(i), "width": 1},
                "hovertemplate": f"cluster {label}<br>silhouette %{{x:.3f}}<extra></extra>",
            }
        )
        tickvals.append(y0 + len(v) / 2)
        ticktext.append(f"{label} (n={c.get('num_points', c['size'])}, {c['mean']:.2f})")
        y0 += len(v) + gap
    mean = analysis["silhouette"]
    layout = _layout(
        f"Silhouette per cluster, run '{analysis['run_key']}' (mean {mean:.3f})",
        "silhouette coefficient", "cluster",
        height=max(340, min(1200, 40 * len(analysis["clusters"]) + 120)),
    )
    layout["yaxis"].update({"tickvals": tickvals, "ticktext": ticktext, "showgrid": False, "zeroline": False})
    layout["xaxis"].update({"range": [min(-0.2, min((min(c["values"], default=0) for c in analysis["clusters"]), default=0) - 0.05), 1]})
    layout["shapes"] = [
        {"type": "line", "xref": "x", "yref": "paper", "x0": mean, "x1": mean, "y0": 0, "y1": 1,
         "line": {"color": _HIGHLIGHT, "dash": "dash", "width": 2}}
    ]
    layout["annotations"] = [
        {"x": mean, "y": 1, "xref": "x", "yref": "paper", "text": "mean", "showarrow": False,
         "yanchor": "bottom", "font": {"color": _HIGHLIGHT}}
    ]
    return {"data": data, "layout": layout}


def heatmap_figure(table, title, xtitle, ytitle):
    """Annotated heatmap of a contingency table ``{"rows", "cols", "counts"}``."""
    rows = [str(r) for r in table["rows"]]
    cols = [str(c) for c in table["cols"]]
    data = [
        {
            "type": "heatmap", "z": table["counts"], "x": cols, "y": rows,
            "colorscale": "Blues", "texttemplate": "%{z}", "hoverongaps": False,
            "hovertemplate": ytitle + " %{y}<br>" + xtitle + " %{x}<br>%{z} samples<extra></extra>",
        }
    ]
    layout = _layout(title, xtitle, ytitle, height=max(340, min(1000, 28 * len(rows) + 140)))
    layout["xaxis"]["type"] = "category"
    layout["yaxis"].update({"type": "category", "autorange": "reversed"})
    return {"data": data, "layout": layout}


def purity_figure(evaluation):
    """Bar per cluster: purity (share of its majority class), labeled with the class."""
    rows = evaluation["per_cluster"]
    x = [str(r["cluster"]) for r in rows]
    data = [
        {
            "type": "bar", "x": x, "y": [r["purity"] for r in rows],
            "text": [f"{r['majority_class']}" for r in rows], "textposition": "auto",
            "customdata": [[r["size"], r["majority_count"]] for r in rows],
            "marker": {"color": [r["purity"] for r in rows], "colorscale": "Viridis", "cmin": 0, "cmax": 1},
            "hovertemplate": "cluster %{x}<br>purity %{y:.2f} (%{customdata[1]} of %{customdata[0]})<br>majority %{text}<extra></extra>",
        }
    ]
    layout = _layout(
        f"Purity per cluster vs '{evaluation['gt_field']}' (overall {evaluation['purity']:.2f})",
        "cluster", "purity",
    )
    layout["xaxis"]["type"] = "category"
    layout["yaxis"]["range"] = [0, 1.05]
    return {"data": data, "layout": layout}


def sizes_figure(summary):
    rows = summary["clusters"]
    x = [str(r["cluster"]) for r in rows]
    data = [
        {
            "type": "bar", "x": x, "y": [r["size"] for r in rows],
            "text": [r.get("name") or "" for r in rows], "textposition": "auto",
            "marker": {"color": [color(i) for i in range(len(rows))]},
        }
    ]
    layout = _layout(f"Cluster sizes, run '{summary['run_key']}'", "cluster", "samples")
    layout["xaxis"]["type"] = "category"
    return {"data": data, "layout": layout}


def scatter_figure(points, labels, title, max_points=5000, random_state=0, names=None, ids=None):
    """2-d scatter colored by cluster (at most ``max_points`` drawn, sampled).
    With ``ids`` (one per point), each trace carries its points' ids (Plotly's
    ``ids``, which the App passes to a panel's selection handler)."""
    points = np.asarray(points, dtype=float)
    labels = np.asarray(labels)
    ids = None if ids is None else np.asarray(ids)
    if len(points) > max_points:
        keep = np.sort(np.random.default_rng(random_state).choice(len(points), max_points, replace=False))
        points, labels = points[keep], labels[keep]
        ids = None if ids is None else ids[keep]
    names = names or {}
    data = []
    for i, c in enumerate(np.unique(labels)):
        m = labels == c
        name = f"cluster {c}" + (f" {names[str(c)]}" if names.get(str(c)) else "")
        trace = {
            "type": "scattergl", "mode": "markers", "name": name,
            "x": points[m, 0].round(4).tolist(), "y": points[m, 1].round(4).tolist(),
            "marker": {"size": 5, "color": "#999999" if int(c) < 0 else color(i)},
        }
        if ids is not None:
            trace["ids"] = ids[m].tolist()
        data.append(trace)
    layout = _layout(title, "dim 1", "dim 2", height=480, showlegend=True)
    return {"data": data, "layout": layout}
