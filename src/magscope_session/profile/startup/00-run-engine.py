# The RunEngine, with the metadata every run carries. Runs in IPython (`magscope ipython`)
# and in the queueserver worker (`magscope qserver`); the BestEffortCallback and progress
# bars only make sense at a terminal, so the worker goes without them.
# `np` and `plt` as in any scientific session (the queue's worker plots without a screen).
import os

import matplotlib
import numpy as np
from bluesky_queueserver import is_re_worker_active

from magscope_devices import load_instrument_config
from magscope_session import RunProgress, make_run_engine, session_metadata

interactive = not is_re_worker_active()
if not interactive:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt

# The instrument: `magscope ipython|qserver --config FILE` ($MAGSCOPE_CONFIG), else the
# simulated microscope (its world's seed from $MAGSCOPE_SIM_SEED).
instrument_config = load_instrument_config()
if instrument_config.source is None and "MAGSCOPE_SIM_SEED" in os.environ:
    from dataclasses import replace as _replace

    instrument_config = _replace(
        instrument_config,
        sim=_replace(instrument_config.sim, seed=int(os.environ["MAGSCOPE_SIM_SEED"])),
    )
RE, bec = make_run_engine(
    session_metadata(
        sample=os.environ.get("MAGSCOPE_SAMPLE", "unspecified"),
        operator=os.environ.get("MAGSCOPE_OPERATOR") or None,
        instrument=instrument_config.instrument,
        sim_params=instrument_config.sim if instrument_config.simulated_camera else None,
    ),
    best_effort=interactive,
    progress_bars=interactive,
)
# A plan running longer than a few seconds prints a line every 5 s (its name, the time so
# far, events per stream and the percentage where the plan announces its points) and one
# when it ends; in the queue, the lines go to the worker's console output.
RE.subscribe(RunProgress())
