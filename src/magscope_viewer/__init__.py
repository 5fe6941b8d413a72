"""The Qt live viewer (PyQt5 + pyqtgraph), a separate process."""
