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

from .operators import OPERATORS  # noqa: E402
from .operators.panel import ClustersPanel  # noqa: E402


def register(plugin):
    for operator_cls in OPERATORS:
        plugin.register(operator_cls)
    plugin.register(ClustersPanel)
