"""Reading and writing sample and label fields: the one place where the
library talks to the database for bulk values.

Every path that reads embeddings (runs, evaluation, curation) or writes many
values (a run's fields, curation actions, embeddings) goes through here, for
samples and for the labels of a patches field alike.
"""

from . import features as cf


def read_embeddings(samples, field):
    """``(ids, X, missing_ids)``: the ids of the samples of ``samples`` whose
    ``field`` is set (label ids for a field of patches), their vectors as a
    float32 ``(n, d)`` matrix, and the ids of those without a value."""
    cf.validate_embeddings_field(samples, field)
    ids, values = samples.values(["id", field])
    have = [i for i, v in enumerate(values) if v is not None]
    missing = [ids[i] for i, v in enumerate(values) if v is None]
    if not have:
        raise ValueError(f"No sample of this collection has a value in '{field}'")
    X = cf.as_matrix([values[i] for i in have], source=f"embeddings in '{field}'")
    return [ids[i] for i in have], X, missing


def write_fields(dataset, columns, patches_field=None):
    """Writes ``columns`` ({path: {id: value}}) on ``dataset``: by sample id, or
    by label id when the paths are attributes of the labels of ``patches_field``
    (a value of None clears it). Nothing but these paths and ids is touched."""
    for path, values in columns.items():
        if patches_field:
            dataset.set_label_values(path, values)
        else:
            dataset.set_values(path, values, key_field="id")
