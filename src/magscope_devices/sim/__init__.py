"""The simulated magnetic-tweezers microscope: world model (physics) and image renderer."""
