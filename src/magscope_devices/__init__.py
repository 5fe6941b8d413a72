"""ophyd-async devices of the magnetic-tweezers microscope and their simulated twins."""
