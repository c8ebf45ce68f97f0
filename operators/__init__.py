"""Operators of the ``@imgclust/clustering`` plugin (thin wrappers over ``clustering``)."""

from .clusters import ComputeClusters
from .curation import (
    AssignNewSamples,
    ClustersToLabels,
    MergeClusters,
    SetClusterName,
    SplitCluster,
    Subcluster,
    TagCluster,
)
from .embeddings import ComputeEmbeddings
from .evaluation import ChooseK, CompareRuns, EvaluateRun, PlotSilhouette, RunSummary, VisualizeRun
from .feature_maps import FeatureMapsPanel, ShowFeatureMaps
from .labeling import LabelClusters
from .panel import ClustersPanel
from .runs import CheckRun, DeleteRun, GetRunInfo, LoadRunView, RenameRun

OPERATORS = [
    ComputeClusters,
    ComputeEmbeddings,
    GetRunInfo,
    LoadRunView,
    RenameRun,
    DeleteRun,
    CheckRun,
    LabelClusters,
    SetClusterName,
    MergeClusters,
    SplitCluster,
    Subcluster,
    AssignNewSamples,
    ClustersToLabels,
    TagCluster,
    ChooseK,
    EvaluateRun,
    CompareRuns,
    PlotSilhouette,
    VisualizeRun,
    RunSummary,
    ShowFeatureMaps,
]

PANELS = [ClustersPanel, FeatureMapsPanel]
