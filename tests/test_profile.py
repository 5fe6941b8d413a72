"""The startup profile as the queueserver sees it: the plan and device list is generated
by a project command and kept in sync with the code; permissions allow the project's
plans and hide the private and interactive-only ones."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.system

PROFILE = Path(__file__).resolve().parents[1] / "src" / "magscope_session" / "profile"
MAGSCOPE = str(Path(sys.executable).with_name("magscope"))


def test_existing_plans_and_devices_is_in_sync_with_the_code(tmp_path):
    copy = tmp_path / "profile"
    shutil.copytree(PROFILE, copy)
    (copy / "startup" / "existing_plans_and_devices.yaml").unlink()
    env = dict(os.environ, MAGSCOPE_PROFILE_DIR=str(copy), MAGSCOPE_TILED_PORT="0")
    env.pop("MAGSCOPE_TILED_URI", None)
    out = subprocess.run(
        [MAGSCOPE, "qserver", "list", "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    fresh = yaml.safe_load((copy / "startup" / "existing_plans_and_devices.yaml").read_text())
    committed = yaml.safe_load((PROFILE / "startup" / "existing_plans_and_devices.yaml").read_text())
    assert fresh == committed, (
        "profile/startup/existing_plans_and_devices.yaml is out of date: run "
        "`magscope qserver list` and commit it"
    )


def test_permissions_allow_the_experiments_and_hide_the_rest():
    perms = yaml.safe_load((PROFILE / "startup" / "user_group_permissions.yaml").read_text())
    plans = yaml.safe_load((PROFILE / "startup" / "existing_plans_and_devices.yaml").read_text())
    allowed = set(perms["user_groups"]["primary"]["allowed_plans"])
    forbidden = set(perms["user_groups"]["root"]["forbidden_plans"])
    experiments = {
        "zlut_sweep", "force_calibration", "force_extension", "rotation_extension",
        "force_ramp", "force_clamp", "auto_select_beads", "find_reference_beads",
    }
    assert experiments <= allowed <= set(plans["existing_plans"])
    assert {"load_zlut", "load_force_calibration", ":^_"} <= forbidden
    assert "microscope" in plans["existing_devices"]
