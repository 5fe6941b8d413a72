"""What the camera, tracking and services share between processes: the bottom layer.

- :mod:`magscope_ipc.shm`: named shared-memory segments with crash-safe ownership, and
  :class:`~magscope_ipc.shm.SharedRecord` (one structured record in a segment);
- :mod:`magscope_ipc.rings`: lock-free single-writer rings of slots
  (:class:`~magscope_ipc.rings.SlotRing`, the camera's :class:`~magscope_ipc.rings.FrameRing`);
- :mod:`magscope_ipc.track_ring`: the track ring (per camera frame, every bead's position);
- :mod:`magscope_ipc.processes`: every child process (camera, tracking workers, services)
  started, watched and stopped one way; :mod:`magscope_ipc.lifeline`, the launcher that
  ties a program's life to its parent's.

Only NumPy and psutil are imported here: no Bluesky, ophyd-async, Tiled or Qt.
"""
