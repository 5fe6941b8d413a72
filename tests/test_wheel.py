"""The package as a user installs it: a wheel built from this checkout, installed into a
folder of its own, and `magscope ipython` and `magscope qserver list` run from a folder
outside the checkout, with nothing of the checkout on the import path.

The wheel is built without build isolation (offline: setuptools >= 77 comes with the
test extra) from a copy of the sources, so the checkout gets no build/ or egg-info.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from process_helpers import free_port

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel installed (without dependencies: they are this interpreter's) in a folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns(
        "__pycache__", "*.egg-info", "*.nbi", "*.nbc"
    ))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"),
         str(source)], capture_output=True, text=True, timeout=120,
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("magscope_bluesky-*.whl")
    site = tmp / "site"
    done = subprocess.run(
        [*pip, "install", "--no-deps", "--no-compile", "--target", str(site), str(wheel)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return site


def _env(site: Path, home: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith("MAGSCOPE_") and k not in ("PYTHONPATH", "IPYTHONDIR")
    }
    env.update(
        PYTHONPATH=str(site),  # the installed copy only: no checkout on the path
        IPYTHONDIR=str(home / "ipython"),
        MAGSCOPE_DATA_DIR=str(home / "data"),
        MAGSCOPE_TILED_PORT="0",
        MAGSCOPE_INSTANCE=f"wheel{uuid.uuid4().hex[:8]}",  # not the default instrument
        MAGSCOPE_PROXY_IN=f"127.0.0.1:{free_port()}",  # not the default proxy addresses
        MAGSCOPE_PROXY_OUT=f"127.0.0.1:{free_port()}",
    )
    return env


def test_magscope_ipython_and_qserver_list_from_a_wheel(installed, tmp_path):
    home = tmp_path / "elsewhere"
    home.mkdir()
    env = _env(installed, home)
    magscope = str(installed / "bin" / "magscope")
    code = (
        "import magscope_session, magscope_session._cli as cli; "
        "print('FROM', magscope_session.__file__); print('PROFILE', cli.profile_dir()); "
        "print('SESSION', type(RE).__name__, microscope.name, callable(zlut_sweep), "
        "callable(force_calibration), tiled is not None, np.__name__, plt.__name__, "
        "type(microscope.summary(fps_interval_s=0)).__name__)"
    )
    out = subprocess.run(
        [magscope, "ipython", "-c", code], cwd=home, env=env, capture_output=True,
        text=True, timeout=180,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in out.stdout.splitlines()
             if line.split(" ", 1)[0] in ("FROM", "PROFILE", "SESSION")}
    assert lines["FROM"].startswith(str(installed)), lines
    assert lines["PROFILE"] == str(installed / "magscope_session" / "profile")
    assert lines["SESSION"].split() == [
        "MagscopeRunEngine", "microscope", "True", "True", "True", "numpy",
        "matplotlib.pyplot", "MicroscopeSummary",
    ]
    assert not list(home.glob("profile*"))  # IPython kept its files in the data folder
    assert (home / "data" / "ipython").is_dir()

    listed = installed / "magscope_session" / "profile" / "startup" / "existing_plans_and_devices.yaml"
    listed.unlink()
    out = subprocess.run(
        [magscope, "qserver", "list"], cwd=home, env=env, capture_output=True, text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"wrote {listed}" in out.stdout
    fresh = yaml.safe_load(listed.read_text())
    assert {"zlut_sweep", "force_calibration", "force_extension"} <= set(fresh["existing_plans"])
    assert "microscope" in fresh["existing_devices"]
