"""Bead tracking compute and services: pure NumPy/numba, no Bluesky, ophyd-async or Qt.

Public face of the tracking kernels (see docs/tracking.md):

- :func:`track` (stack, zlut=None, *, bead_index=None, options=None) -> :class:`TrackResult`
- :func:`build_zlut` and :class:`ZLUT` (save/load, stack, select, index_of)
- :func:`find_beads` (frame, *, roi_size, max_beads=None) -> :class:`BeadCandidates`
- :func:`warmup` compiles (or loads from the cache) every kernel; call it at start-up.
- Building blocks: :func:`locate_xy`, :func:`radial_profile`, :func:`match_z`, and their
  plain-NumPy ``*_reference`` twins.

The tracking service (see docs/architecture.md):

- :class:`TrackingService` runs worker processes that track every camera frame into the
  shared-memory track ring; :meth:`TrackingService.health` -> :class:`TrackingHealth`.
- The ROI table: :data:`ROI_DTYPE`, :func:`as_roi_table`, :func:`validate_rois`; readers in
  other processes (the viewer) take the published table from the service's control record
  with :func:`read_rois` -> :class:`RoiTable` (seqlock-checked, read only); likewise the
  loaded Z-LUT file with :func:`read_zlut` (checked with :func:`file_sha256`) and each
  worker's record (``trkwK``) with
  :func:`read_worker` -> :class:`WorkerRecord`.
- Recording: :meth:`TrackingService.start_recording` -> :class:`TrackRecorder`, which the
  service's collector feeds with the rows it merges into an HDF5 track file.

Note: the submodules ``track`` and ``find_beads`` share their names with the functions
re-exported here; import them with ``from magscope_tracking.track import ...``.
"""

from ._health import DropReason, TrackingHealth, TrackingServiceError, WorkerHealth
from ._recorder import TrackRecorder, TrackRecordingError
from ._records import RoiTable, WorkerRecord, file_sha256, read_rois, read_worker, read_zlut
from ._roi_table import MIN_ROI_SIZE, ROI_DTYPE, as_roi_table, validate_rois
from ._warmup import synthetic_bead, warmup
from .find_beads import BeadCandidates, find_beads, roi_origin
from .options import RadialBins, TrackOptions, TrackStatus
from .radial_profile import radial_profile, radial_profile_reference
from .service import TrackingService
from .track import TrackResult, locate_xy, track, track_reference
from .xy import XYResult, locate_xy_reference
from .z_match import match_z, match_z_reference
from .zlut import ZLUT, ZLUTError, ZLUTFormatError, ZLUTMismatchError, build_zlut

__all__ = [
    "MIN_ROI_SIZE",
    "ROI_DTYPE",
    "BeadCandidates",
    "DropReason",
    "RadialBins",
    "RoiTable",
    "TrackOptions",
    "TrackResult",
    "TrackStatus",
    "TrackRecorder",
    "TrackRecordingError",
    "TrackingHealth",
    "TrackingService",
    "TrackingServiceError",
    "WorkerHealth",
    "WorkerRecord",
    "XYResult",
    "ZLUT",
    "ZLUTError",
    "ZLUTFormatError",
    "ZLUTMismatchError",
    "as_roi_table",
    "build_zlut",
    "file_sha256",
    "find_beads",
    "locate_xy",
    "locate_xy_reference",
    "match_z",
    "match_z_reference",
    "radial_profile",
    "radial_profile_reference",
    "read_rois",
    "read_worker",
    "read_zlut",
    "roi_origin",
    "synthetic_bead",
    "track",
    "track_reference",
    "validate_rois",
    "warmup",
]
