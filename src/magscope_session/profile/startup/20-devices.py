# The microscope of the instrument config (the simulated one by default). Its camera and
# tracking processes start here; they stop and the shared memory is freed when this process exits (also the queueserver's worker).
from ophyd_async.core import init_devices

from magscope_devices import make_microscope
from magscope_devices._ownership import instance_from_env
from magscope_session import close_at_exit, keep_instrument_state, watch_health

# One owner per instrument: a second session on the same instance is refused, naming the
# process that drives it; `magscope ipython --instance NAME` starts a separate one.
instance = instance_from_env()
with init_devices():
    microscope = make_microscope(
        instrument_config, data_dir=tiled_target.detector_data_dir, instance=instance,
        name="microscope",
    )
close_at_exit(microscope.close, priority=20)
# Health: every run gets a `health` stream (read at its start and end), and a line every
# 60 s ($MAGSCOPE_HEALTH_INTERVAL_S) goes to <data dir>/logs/health-<instance>.log.
health_log = watch_health(
    RE, microscope, data_dir=tiled_target.data_dir, instance=instance, writer=tiled_writer
)
# The instrument's state (beads and reference beads, Z-LUT and force calibration by run
# uid, camera, tracking and lock settings) is restored from
# <data dir>/state/instrument-<instance>.yaml and saved there when it changes; the locks
# stay off until turned on. `magscope state show|export|import`.
state_keeper = keep_instrument_state(
    RE, microscope, data_dir=tiled_target.data_dir, instance=instance, runs=tiled
)
camera = microscope.camera
magnet_z = microscope.magnet_z
magnet_rotation = microscope.magnet_rotation
focus = microscope.focus
tracker = microscope.tracker  # select beads: `await tracker.find_beads()` or set tracker.rois
