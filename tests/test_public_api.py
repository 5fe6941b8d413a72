"""The public face: every name each package exports flat (``__all__``) imports, and the
modules behind them are private (underscored)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
import textwrap

import pytest

PACKAGES = [
    "magscope_devices",
    "magscope_plans",
    "magscope_plans.analysis",
    "magscope_session",
    "magscope_tracking",
]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_imports(package):
    module = importlib.import_module(package)
    names = module.__all__
    assert len(names) == len(set(names)), f"{package}.__all__ repeats a name"
    for name in names:
        value = getattr(module, name)
        assert value is not None, f"{package}.{name}"
        assert name in dir(module)
    namespace: dict = {}
    exec(f"from {package} import *", namespace)  # noqa: S102 - the star import users type
    assert set(names) <= set(namespace)


@pytest.mark.parametrize(
    ("package", "public"),
    [
        ("magscope_plans", {"analysis"}),
        ("magscope_devices", {"sim", "backends"}),
        ("magscope_session", {"runs"}),
    ],
)
def test_modules_behind_the_flat_names_are_private(package, public):
    """Only the named submodules are public; the others are underscored (issue #10)."""
    module = importlib.import_module(package)
    names = {info.name for info in pkgutil.iter_modules(module.__path__)}
    assert {name for name in names if not name.startswith("_")} == public


def test_unknown_names_raise_attribute_error():
    import magscope_devices
    import magscope_session

    for package in (magscope_devices, magscope_session):
        with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
            package.NoSuchThing  # noqa: B018


def test_plans_are_the_functions_their_private_modules_define():
    import magscope_plans
    from magscope_plans import (
        CALIBRATION_FIELDS,
        FIT_FIELDS,
        force_calibration,
        force_extension,
        load_zlut,
        zlut_sweep,
    )
    from magscope_plans._force_extension import force_sequence

    for plan in (force_calibration, force_extension, zlut_sweep):
        assert inspect.isgeneratorfunction(plan), plan
    assert inspect.isfunction(magscope_plans.force_calibration)
    module = sys.modules["magscope_plans._force_calibration"]
    assert inspect.ismodule(module) and module.force_calibration is force_calibration
    assert "force_psd_pn" in CALIBRATION_FIELDS and FIT_FIELDS
    assert force_sequence([1.0, 2.0], "up_down") == [1.0, 2.0, 1.0]
    assert callable(load_zlut)


def test_flat_names_are_the_modules_names():
    from magscope_devices import Microscope, SimParams, make_simulated_microscope
    from magscope_devices._microscope import Microscope as Microscope_
    from magscope_devices.sim.world import SimParams as SimParams_
    from magscope_session import find_runs, make_run_engine
    from magscope_session._setup import make_run_engine as make_run_engine_
    from magscope_session.runs import find_runs as find_runs_

    assert Microscope is Microscope_ and SimParams is SimParams_
    assert make_run_engine is make_run_engine_ and find_runs is find_runs_
    assert callable(make_simulated_microscope)


@pytest.mark.system
def test_package_imports_are_lazy_where_processes_start():
    """The camera process (``-m magscope_devices._acquisition``) and the Tiled server
    (``-m magscope_session._tiled_server``) import their package's ``__init__``: it must not
    pull in ophyd-async or Bluesky."""
    code = textwrap.dedent(
        """
        import sys
        import magscope_devices, magscope_session, magscope_devices._acquisition
        heavy = [m for m in ("ophyd_async", "bluesky", "tiled.client") if m in sys.modules]
        print(heavy)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
