"""Running the instrument: command line, embedded Tiled server, document writers, demo."""
