# The RunEngine, with the metadata every run carries, the BestEffortCallback and
# progress bars. Runs in IPython (`magscope ipython`) and in the queueserver worker.
import os

from magscope_devices.sim.world import SimParams
from magscope_session.setup import make_run_engine, session_metadata

sim_params = SimParams(seed=int(os.environ.get("MAGSCOPE_SIM_SEED", "0")))
RE, bec = make_run_engine(
    session_metadata(
        sample=os.environ.get("MAGSCOPE_SAMPLE", "unspecified"),
        operator=os.environ.get("MAGSCOPE_OPERATOR") or None,
        sim_params=sim_params,
    ),
    progress_bars=True,
)
