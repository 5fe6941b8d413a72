# Plans: bluesky's own and the microscope's.
import bluesky.plan_stubs as bps
import bluesky.plans as bp

from magscope_plans.basic import camera_and_axes, count_at_heights, focus_scan
from magscope_plans.safety import restore_safe_state
