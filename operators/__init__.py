"""Thin FiftyOne adapters: read params, call one gradcam_engine function, report progress."""

from .compute import ComputeCams
from .detection_cam import ShowDetectionCam
from .discovery import BackgroundTest, ClusterCams, RoadCams
from .eval_metrics import CamBgFlipRate, CamLowFocusShare, CamMeanFocus
from .proof import DeletionInsertion, SanityCheck
from .review_panel import CamReviewPanel
from .run_management import DeleteCamRun, ListCamRuns, RenameCamRun
from .run_shard import RunCamShard
from .run_status import CamRunStatus
from .scoring import CamClassReport, ScoreCams

OPERATORS: list = [
    ComputeCams,
    ListCamRuns,
    RenameCamRun,
    DeleteCamRun,
    ScoreCams,
    CamClassReport,
    ClusterCams,
    BackgroundTest,
    RoadCams,
    SanityCheck,
    DeletionInsertion,
    CamRunStatus,
    RunCamShard,
    CamMeanFocus,
    CamLowFocusShare,
    CamBgFlipRate,
    ShowDetectionCam,
]
PANELS: list = [CamReviewPanel]

__all__ = ["OPERATORS", "PANELS", *(c.__name__ for c in OPERATORS + PANELS)]
