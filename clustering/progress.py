"""Progress reporting, with FiftyOne's convention for ``progress``: ``None``
(a progress bar, unless ``fo.config.show_progress_bars`` is off), ``True`` (a
progress bar), ``False`` (silent) or a callable ``progress(fraction, message)``.
Internally every long function reports through such a callable."""

import sys
from contextlib import contextmanager


def scaled(progress, start, end):
    """Maps a sub-task's [0, 1] progress onto [start, end] of ``progress``."""
    if progress is None:
        return None
    return lambda fraction, message="": progress(start + (end - start) * fraction, message)


def _silent(fraction, message=""):
    pass


def _bars_enabled():
    fo = sys.modules.get("fiftyone")  # only consulted where FiftyOne is in use
    config = getattr(fo, "config", None)
    return bool(getattr(config, "show_progress_bars", True))


@contextmanager
def progress_or_bar(progress, label):
    """Yields a ``report(fraction, message)`` callable for ``progress`` (see the
    module docstring): ``progress`` itself, a no-op, or a terminal bar."""
    if callable(progress) and not isinstance(progress, bool):
        yield progress
        return
    if progress not in (None, True, False):
        raise ValueError(
            f"progress must be None, True, False or a callable progress(fraction, message); "
            f"got {progress!r}"
        )
    if progress is False or (progress is None and not _bars_enabled()):
        yield _silent
        return

    from tqdm.auto import tqdm

    bar = tqdm(total=100, desc=label, unit="%", bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}{postfix}]")

    def update(fraction, message=""):
        bar.n = round(100 * min(max(fraction, 0.0), 1.0), 1)
        if message:
            bar.set_postfix_str(message, refresh=False)
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()
