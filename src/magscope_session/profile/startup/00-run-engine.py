# The RunEngine, with the metadata every run carries. Runs in IPython (`magscope ipython`)
# and in the queueserver worker (`magscope qserver`); the BestEffortCallback and progress
# bars only make sense at a terminal, so the worker goes without them.
import os

from bluesky_queueserver import is_re_worker_active

from magscope_devices import SimParams
from magscope_session import make_run_engine, session_metadata

interactive = not is_re_worker_active()
sim_params = SimParams(seed=int(os.environ.get("MAGSCOPE_SIM_SEED", "0")))
RE, bec = make_run_engine(
    session_metadata(
        sample=os.environ.get("MAGSCOPE_SAMPLE", "unspecified"),
        operator=os.environ.get("MAGSCOPE_OPERATOR") or None,
        sim_params=sim_params,
    ),
    best_effort=interactive,
    progress_bars=interactive,
)
