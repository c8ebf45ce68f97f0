"""Cluster names as a run stores them: the name field, hand-written names,
and names made unique among a run's clusters."""

#: the provider recorded for a name given by hand (:func:`clustering.set_cluster_name`)
HAND_WRITTEN = "hand-written"


def default_name_field(run_key):
    return f"{run_key}_name"


def make_unique(raw_names, keep=()):
    """``{cluster: name}`` with names shared by several clusters (ignoring
    case) suffixed by their cluster ids: ``"dogs (3)"``, ``"dogs (7)"``; the
    names of the clusters in ``keep`` (hand-written) stay as they are."""
    groups = {}
    for c, name in raw_names.items():
        groups.setdefault(name.casefold(), []).append(c)
    out = {}
    for c, name in raw_names.items():
        shared = len(groups[name.casefold()]) > 1
        out[c] = f"{name} ({c})" if shared and c not in keep else name
    return out


def name_field_of(dataset, run_key, config):
    """The run's name field (its config's, or ``{run_key}_name``), refusing a
    field of that name that belongs to something else."""
    name_field = config.name_field or default_name_field(run_key)
    owned = name_field == config.name_field
    if dataset.has_field(name_field) and not owned:
        raise ValueError(
            f"Field '{name_field}' already exists and does not belong to run "
            f"'{run_key}'; delete or rename that field first"
        )
    return name_field
