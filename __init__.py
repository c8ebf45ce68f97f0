"""FiftyOne plugin ``@imgclust/clustering``.

The operators are thin wrappers over the :mod:`clustering` library, which sits
beside this file; the plugin directory is put on ``sys.path`` so that
``import clustering`` resolves to it (run results reference its classes).
"""

import os
import sys

_PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))
if _PLUGIN_DIR not in sys.path:
    sys.path.insert(0, _PLUGIN_DIR)

from .operators import OPERATORS, PANELS  # noqa: E402


def register(plugin):
    for cls in OPERATORS + PANELS:
        plugin.register(cls)
