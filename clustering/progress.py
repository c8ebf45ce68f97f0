"""Progress reporting: every long function takes ``progress(fraction, message)``."""

from contextlib import contextmanager


def scaled(progress, start, end):
    """Maps a sub-task's [0, 1] progress onto [start, end] of ``progress``."""
    if progress is None:
        return None
    return lambda fraction, message="": progress(start + (end - start) * fraction, message)


@contextmanager
def progress_or_bar(progress, label):
    """Yields ``progress`` if given, else a terminal progress bar (SDK use)."""
    if progress is not None:
        yield progress
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
