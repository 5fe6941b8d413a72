# The simulated microscope. Its camera process starts here and stops at exit.
from ophyd_async.core import init_devices

from magscope_devices.microscope import make_simulated_microscope

with init_devices():
    microscope = make_simulated_microscope(
        sim_params, data_dir=tiled_target.detector_data_dir, name="microscope"
    )
camera = microscope.camera
magnet_z = microscope.magnet_z
magnet_rotation = microscope.magnet_rotation
focus = microscope.focus
tracker = microscope.tracker  # select beads: `await tracker.find_beads()` or set tracker.rois
