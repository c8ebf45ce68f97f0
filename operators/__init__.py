"""Operators of the ``@imgclust/clustering`` plugin (thin wrappers over ``clustering``)."""

from .clusters import ComputeClusters
from .embeddings import ComputeEmbeddings
from .evaluation import ChooseK, CompareRuns, EvaluateRun, PlotSilhouette, RunSummary, VisualizeRun
from .feature_maps import FeatureMapsPanel, ShowFeatureMaps
from .labeling import LabelClusters
from .runs import DeleteRun, GetRunInfo, LoadRunView, RenameRun

OPERATORS = [
    ComputeClusters,
    ComputeEmbeddings,
    GetRunInfo,
    LoadRunView,
    RenameRun,
    DeleteRun,
    LabelClusters,
    ChooseK,
    EvaluateRun,
    CompareRuns,
    PlotSilhouette,
    VisualizeRun,
    RunSummary,
    ShowFeatureMaps,
]

PANELS = [FeatureMapsPanel]
