"""The force on the beads (pN) as a movable: a force calibration over the magnet height.

:class:`Force` is a derived axis. It holds the :class:`~._motors.MagnetZ` by reference (not
as a child: the magnet stays its own device, read and moved on its own), and a
:class:`~._force_curve.ForceCalibration` loaded from a JSON file through its
``calibration_file`` signal, so a plan loads one with ``bps.mv(force.calibration_file,
path)`` and it is recorded in the run's configuration.

- ``readback`` (pN, hinted): the calibrated ensemble force at the magnet's current height
  (NaN without a calibration), a derived signal of the magnet readback that updates
  while the magnet moves;
- ``error_pn`` (pN, read with it): the calibration's standard error of that force (from
  the fit's covariance); NaN without a calibration, without errors (an old one), or when
  the magnet stands outside the calibrated heights (an extrapolation);
- ``setpoint`` (pN): the last force asked for;
- configuration: ``calibration_file`` (path, "" = none), ``low_limit`` / ``high_limit``
  (pN, read-only): the calibrated force range.

``set(force)`` checks the calibration and the range before anything moves, then moves the
magnet to the calibrated height and finishes when it arrives; ``stop()`` stops the magnet.
Both devices must be connected (e.g. both created inside one ``init_devices()``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from ophyd_async.core import (
    CalculatableTimeout,
    DeviceMock,
    MovableLogic,
    Reference,
    SignalRW,
    SoftSignalBackend,
    StandardMovable,
    StandardReadable,
    TimeoutCalculator,
    default_mock_class,
    derived_signal_r,
    soft_signal_r_and_setter,
    soft_signal_rw,
)
from ophyd_async.core import StandardReadableFormat as Format

from ._force_curve import ForceCalibration, ForceRangeError
from ._motors import LimitError, MagnetZ

__all__ = ["Force", "ForceLogic", "NoForceCalibrationError"]


class NoForceCalibrationError(RuntimeError):
    """A force was requested before any force calibration was loaded."""


@dataclass
class ForceLogic(MovableLogic[float]):
    """Converts a force to a magnet height through the calibration and moves the magnet."""

    magnet: Reference[MagnetZ]
    calibration: Callable[[], ForceCalibration | None]
    device_name: Callable[[], str]

    def _require_calibration(self) -> ForceCalibration:
        cal = self.calibration()
        if cal is None:
            raise NoForceCalibrationError(
                f"{self.device_name()}: no force calibration loaded: run force_calibration(...) "
                f"or load_force_calibration(microscope, run) first"
            )
        return cal

    def target_height_mm(self, force_pn: float) -> float:
        """Magnet height (mm) for ``force_pn`` (pN); errors as :meth:`check_move`."""
        if not isinstance(force_pn, numbers.Real) or isinstance(force_pn, bool):
            raise ForceRangeError(
                f"{self.device_name()}: force {force_pn!r} is a {type(force_pn).__name__}, "
                "not a finite number of pN"
            )
        if not math.isfinite(force_pn):
            raise ForceRangeError(
                f"{self.device_name()}: force {force_pn!r} is not a finite number of pN"
            )
        cal = self._require_calibration()
        try:
            return float(cal.height_mm(float(force_pn)))
        except ForceRangeError as exc:
            raise ForceRangeError(f"{self.device_name()}: {exc}") from None

    async def check_move(self, new_position: float) -> None:
        height = self.target_height_mm(new_position)
        magnet = self.magnet()
        try:
            await magnet.check_value(height)
        except LimitError as exc:
            raise LimitError(
                f"{self.device_name()}: force {new_position} pN needs magnet height "
                f"{height:.6g} mm, which the magnet refuses: {exc}"
            ) from exc

    async def calculate_timeout(self, old_position: float, new_position: float) -> float | None:
        magnet = self.magnet()
        current = await magnet.readback.get_value()
        return await magnet.movable_logic.calculate_timeout(
            current, self.target_height_mm(new_position)
        )

    async def get_units_precision(self) -> tuple[str | None, int | None]:
        return "pN", 3

    async def move(self, new_position: float, timeout: TimeoutCalculator) -> None:
        height = self.target_height_mm(new_position)
        await self.setpoint.set(float(new_position))
        remaining = timeout()  # None: let the magnet calculate its own timeout
        magnet_timeout: CalculatableTimeout = remaining
        if remaining is None:
            magnet_timeout = "CALCULATE_TIMEOUT"  # == ophyd_async.core.CALCULATE_TIMEOUT
        await self.magnet().set(height, timeout=magnet_timeout)

    async def stop(self) -> None:
        # The Force status reports the stop (success or not); the magnet just halts.
        await self.magnet().stop(success=True)


class ForceMock(DeviceMock["Force"]):
    """Mock mode: the force moves its (mock) magnet, which arrives at once, and the
    readback is derived from the magnet's readback; so nothing is added here. (The
    default mock of a movable copies the setpoint into the readback, which a derived
    readback refuses.)"""

    async def connect(self, device: Force) -> None:
        return None


@default_mock_class(ForceMock)
class Force(StandardReadable, StandardMovable[float]):
    """Force on the beads (pN) set through the magnet height and a force calibration.

    ``magnet_z`` is held by :class:`~ophyd_async.core.Reference`, so it is not a child:
    connect and name it separately. Load a calibration with
    ``bps.mv(force.calibration_file, "/path/to/calibration.json")`` ("" unloads it).
    """

    def __init__(self, magnet_z: MagnetZ, name: str = "") -> None:
        self._magnet_ref = Reference(magnet_z)
        self._calibration: ForceCalibration | None = None
        self._calibration_file_backend = SoftSignalBackend(str, "", setter=self._load_file)
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.calibration_file = SignalRW(backend=self._calibration_file_backend)
            self.low_limit, self._low_limit_set = soft_signal_r_and_setter(
                float, math.nan, units="pN", precision=4
            )
            self.high_limit, self._high_limit_set = soft_signal_r_and_setter(
                float, math.nan, units="pN", precision=4
            )

        def force_at(magnet_z: float, calibration_file: str) -> float:
            # calibration_file is an input only so the readback recomputes when it changes
            cal = self._calibration
            return math.nan if cal is None else float(cal.force_pn(magnet_z))

        def error_at(magnet_z: float, calibration_file: str) -> float:
            # the calibration's standard error there; NaN without one or outside the
            # calibrated heights (an extrapolation has no honest error)
            cal = self._calibration
            if cal is None or not cal.min_height_mm <= magnet_z <= cal.max_height_mm:
                return math.nan
            return float(cal.force_err_pn(magnet_z))

        with self.add_children_as_readables(Format.HINTED_SIGNAL):
            self.readback = derived_signal_r(
                force_at,
                derived_units="pN",
                derived_precision=3,
                magnet_z=magnet_z.readback,
                calibration_file=self.calibration_file,
            )
        with self.add_children_as_readables():
            self.error_pn = derived_signal_r(
                error_at,
                derived_units="pN",
                derived_precision=4,
                magnet_z=magnet_z.readback,
                calibration_file=self.calibration_file,
            )
        self.setpoint = soft_signal_rw(float, math.nan, units="pN", precision=3)
        super().__init__(name=name)

    @property
    def magnet_z(self) -> MagnetZ:
        """The magnet axis this force moves (not a child)."""
        return self._magnet_ref()

    @property
    def calibration(self) -> ForceCalibration | None:
        """The loaded force calibration, or None."""
        return self._calibration

    @cached_property
    def movable_logic(self) -> ForceLogic:
        return ForceLogic(
            setpoint=self.setpoint,
            readback=self.readback,
            magnet=self._magnet_ref,
            calibration=lambda: self._calibration,
            device_name=lambda: self.name or type(self).__name__,
        )

    def _apply(self, cal: ForceCalibration | None) -> None:
        self._calibration = cal
        self._low_limit_set(math.nan if cal is None else cal.min_force_pn)
        self._high_limit_set(math.nan if cal is None else cal.max_force_pn)

    def _load_file(self, path: str | None) -> str:
        """Setter of ``calibration_file``: load the JSON file ("" or None unloads)."""
        path = path or ""
        self._apply(ForceCalibration.load(path) if path else None)
        return path

    def load_calibration(self, cal: ForceCalibration | None, path: str = "") -> None:
        """Use ``cal`` (None unloads) and record ``path`` (where it is saved, or "").

        For code that already holds a calibration; plans should write the file and use
        ``bps.mv(force.calibration_file, path)`` so the change goes through the RunEngine.
        """
        if cal is not None and not isinstance(cal, ForceCalibration):
            raise TypeError(f"expected a ForceCalibration, got {type(cal).__name__}")
        self._apply(cal)
        # Publishing the path also makes the derived readback recompute.
        self._calibration_file_backend.set_value(path)

    async def height_for_force(self, force_pn: float) -> float:
        """Magnet height (mm) that gives ``force_pn`` (pN); raises like ``set`` would."""
        await self.movable_logic.check_move(force_pn)
        return self.movable_logic.target_height_mm(force_pn)
