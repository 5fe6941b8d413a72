"""Force calibration curve: height <-> force, range errors, JSON files, and the fit."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from magscope_devices._force_curve import (
    ForceCalibration,
    ForceCalibrationFormatError,
    ForceRangeError,
    magnet_force_pn,
)
from magscope_plans.analysis import MagnetForceFit, fit_magnet_force

TRUE = dict(f0_pn=68.0, a=0.7, l1_mm=0.8, l2_mm=1.65)


def make_cal(**kw) -> ForceCalibration:
    args: dict[str, Any] = dict(
        TRUE,
        min_height_mm=0.5,
        max_height_mm=8.0,
        bead_ids=(3, 7, 11),
        bead_scale=(1.0, 0.9, 1.12),
        source="abc-123",
        created=1_700_000_000.5,
    )
    args.update(kw)
    return ForceCalibration(**args)


def test_force_matches_the_double_exponential():
    cal = make_cal()
    z = np.array([0.3, 1.0, 3.0, 6.0])
    expected = 68.0 * (0.7 * np.exp(-z / 0.8) + 0.3 * np.exp(-z / 1.65))
    np.testing.assert_allclose(cal.force_pn(z), expected, rtol=1e-14)
    np.testing.assert_allclose(magnet_force_pn(z, **TRUE), expected, rtol=1e-14)
    assert cal.max_force_pn == pytest.approx(float(cal.force_pn(0.5)))
    assert cal.min_force_pn == pytest.approx(float(cal.force_pn(8.0)))
    assert cal.force_pn_for_bead(7, 2.0) == pytest.approx(0.9 * float(cal.force_pn(2.0)))
    with pytest.raises(KeyError, match=r"bead 5 is not in this force calibration.*\[3, 7, 11\]"):
        cal.force_pn_for_bead(5, 2.0)


def test_height_force_height_round_trip():
    cal = make_cal()
    z = np.linspace(0.5, 8.0, 301)
    back = cal.height_mm(cal.force_pn(z))
    assert isinstance(back, np.ndarray) and back.shape == z.shape
    np.testing.assert_allclose(back, z, rtol=0, atol=1e-9)
    h = cal.height_mm(5.0)
    assert isinstance(h, float)
    assert float(cal.force_pn(h)) == pytest.approx(5.0, rel=1e-12)
    # the edges of the range convert exactly
    assert cal.height_mm(cal.max_force_pn) == pytest.approx(0.5, abs=1e-9)
    assert cal.height_mm(cal.min_force_pn) == pytest.approx(8.0, abs=1e-9)


@pytest.mark.parametrize("force", [80.0, 0.01, -1.0])
def test_force_outside_the_calibrated_range_is_refused(force):
    cal = make_cal()
    with pytest.raises(ForceRangeError) as info:
        cal.height_mm(force)
    msg = str(info.value)
    assert f"force {force!r} pN" in msg
    assert f"[{cal.min_force_pn:.6g}, {cal.max_force_pn:.6g}] pN" in msg
    assert "force_calibration" in msg
    assert isinstance(info.value, ValueError)


def test_range_error_for_arrays_and_nan():
    cal = make_cal()
    with pytest.raises(ForceRangeError, match=r"1 of 3 forces \(first 100.0 pN\)"):
        cal.height_mm([1.0, 100.0, 2.0])
    with pytest.raises(ForceRangeError, match="not a finite number"):
        cal.height_mm(float("nan"))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(f0_pn=-1.0), "f0_pn must be positive"),
        (dict(l2_mm=0.0), "l2_mm must be positive"),
        (dict(a=1.5), r"a must be within \[0, 1\]"),
        (dict(min_height_mm=8.0), "min_height_mm .* must be below max_height_mm"),
        (dict(l1_mm=float("inf")), "l1_mm must be a finite number"),
        (dict(bead_scale=(1.0,)), "bead_scale has 1 values for 3 bead_ids"),
        (dict(bead_ids=(1, 1, 2)), "duplicates"),
    ],
)
def test_invalid_calibrations_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        make_cal(**change)


def test_json_round_trip(tmp_path):
    cal = make_cal()
    text = cal.to_json()
    data = json.loads(text)
    assert data["format"] == "magscope-force-calibration" and data["version"] == 2
    assert ForceCalibration.from_json(text) == cal
    path = cal.save(tmp_path / "cal.json")
    loaded = ForceCalibration.load(path)
    assert loaded == cal and loaded.bead_ids == (3, 7, 11)
    assert isinstance(loaded.bead_scale, tuple)
    assert not list(tmp_path.glob(".*.tmp"))


def test_radii_round_trip_and_give_each_bead_its_offset(tmp_path):
    cal = make_cal(bead_radius_nm=(1390.0, math.nan, 1430.0),
                   bead_radius_nm_err=(8.0, math.nan, 6.0), reference_radius_nm=1400.0,
                   reference_radius_nm_err=4.0)
    data = json.loads(cal.to_json())
    assert data["bead_radius_nm"] == [1390.0, None, 1430.0]  # JSON has no NaN
    loaded = ForceCalibration.load(cal.save(tmp_path / "cal.json"))
    assert loaded.bead_radius_nm[0] == 1390.0 and math.isnan(loaded.bead_radius_nm[1])
    offset, err = loaded.radius_offsets_nm([11, 3, 7, 99])
    np.testing.assert_allclose(offset, [30.0, -10.0, 0.0, 0.0])
    np.testing.assert_allclose(err[:2], [math.hypot(6, 4), math.hypot(8, 4)])
    assert np.isnan(err[2:]).all()  # no radius measured, not calibrated


def test_a_version_1_file_loads_without_radii(tmp_path):
    data = make_cal().to_dict()
    for key in ("bead_radius_nm", "bead_radius_nm_err", "reference_radius_nm",
                "reference_radius_nm_err", "covariance", "bead_scale_err"):
        del data[key]
    data["version"] = 1
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(data))
    cal = ForceCalibration.load(path)
    assert cal.bead_radius_nm == () and cal.reference_radius_nm is None
    offset, err = cal.radius_offsets_nm([3, 7])
    assert offset.tolist() == [0.0, 0.0] and np.isnan(err).all()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: "not json {", "not valid JSON"),
        (lambda d: [1, 2], "must be a JSON object"),
        (lambda d: {**d, "format": "something-else"}, "not a force calibration"),
        (lambda d: {**d, "version": 3}, 'unsupported force calibration "version" 3'),
        (lambda d: {k: v for k, v in d.items() if k != "bead_radius_nm"},
         r"missing \['bead_radius_nm'\]"),
        (lambda d: {**d, "bead_radius_nm": [1400.0]}, "bead_radius_nm has 1 values for 3"),
        (lambda d: {**d, "bead_radius_nm": [1400.0, -1.0, 1390.0]},
         "bead_radius_nm must be positive numbers"),
        (lambda d: {**d, "reference_radius_nm": "1400"}, "reference_radius_nm must be a"),
        (lambda d: {k: v for k, v in d.items() if k != "l1_mm"}, r"missing \['l1_mm'\]"),
        (lambda d: {**d, "extra": 1}, r"unknown fields \['extra'\]"),
        (lambda d: {**d, "a": "0.7"}, "a must be a finite number"),
        (lambda d: {**d, "bead_ids": 3}, '"bead_ids" must be a list'),
        (lambda d: {**d, "max_height_mm": 0.1}, "must be below max_height_mm"),
    ],
)
def test_malformed_files_are_refused(tmp_path, edit, message):
    content = edit(make_cal().to_dict())
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ForceCalibrationFormatError, match=message) as info:
        ForceCalibration.load(path)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------------------- fit


def test_fit_recovers_noiseless_parameters():
    z = np.linspace(0.5, 8.0, 12)
    fit = fit_magnet_force(z, magnet_force_pn(z, **TRUE))
    assert isinstance(fit, MagnetForceFit)
    assert fit.model == "double_exponential"
    assert fit.n_points == 12 and fit.n_heights == 12
    for key, value in TRUE.items():
        assert getattr(fit, key) == pytest.approx(value, rel=1e-3), key
    assert fit.rms_relative_residual < 1e-9


def test_fit_of_noisy_data_is_within_5_percent_over_the_range():
    z = np.linspace(0.5, 8.0, 12)
    rng = np.random.default_rng(3)
    true = magnet_force_pn(z, **TRUE)
    force = true * (1.0 + 0.03 * rng.standard_normal(z.size))
    fit = fit_magnet_force(z, force, 0.03 * force)
    zz = np.linspace(0.5, 8.0, 400)
    rel = fit.force_pn(zz) / magnet_force_pn(zz, **TRUE) - 1.0
    assert np.max(np.abs(rel)) < 0.05
    assert 0.005 < fit.rms_relative_residual < 0.06
    for key in TRUE:
        err = getattr(fit, f"{key}_err")
        assert np.isfinite(err) and err > 0, key
    assert fit.l1_mm <= fit.l2_mm


def test_fit_with_beads_sharing_heights():
    z = np.repeat(np.linspace(0.5, 8.0, 8), 5)
    rng = np.random.default_rng(7)
    force = magnet_force_pn(z, **TRUE) * np.exp(0.05 * rng.standard_normal(z.size))
    fit = fit_magnet_force(z, force)
    assert fit.model == "double_exponential" and fit.n_points == 40 and fit.n_heights == 8
    assert fit.f0_pn == pytest.approx(68.0, rel=0.1)


def test_fit_falls_back_to_a_single_exponential():
    z = np.array([1.0, 2.0, 3.0, 4.0])
    force = 50.0 * np.exp(-z / 1.2)
    fit = fit_magnet_force(z, force)
    assert fit.model == "single_exponential"
    assert fit.a == 1.0 and fit.a_err == 0.0
    assert fit.f0_pn == pytest.approx(50.0, rel=1e-9)
    assert fit.l1_mm == pytest.approx(1.2, rel=1e-9) and fit.l2_mm == fit.l1_mm
    two = fit_magnet_force([1.0, 2.0], [10.0, 5.0])
    assert two.model == "single_exponential"
    assert two.l1_mm == pytest.approx(1.0 / np.log(2.0))
    assert np.isnan(two.l1_mm_err)  # no degrees of freedom


def test_fit_input_errors():
    with pytest.raises(ValueError, match="need at least 2 points at 2 distinct magnet heights"):
        fit_magnet_force([1.0], [3.0])
    with pytest.raises(ValueError, match="got 3 points at 1 heights"):
        fit_magnet_force([1.0, 1.0, 1.0], [3.0, 3.1, 2.9])
    with pytest.raises(
        ValueError, match=r"forces must be positive.*got -0.5 pN at magnet height 2.0"
    ):
        fit_magnet_force([1.0, 2.0, 3.0], [3.0, -0.5, 1.0])
    with pytest.raises(ValueError, match="differ in length"):
        fit_magnet_force([1.0, 2.0, 3.0], [3.0, 1.0])
    # NaN points (failed bead fits) are ignored
    fit = fit_magnet_force([1.0, 2.0, 3.0], [10.0, 5.0, np.nan])
    assert fit.n_points == 2


# ---------------------------------------------------------------------------- errors


def _calibration_data(rng, heights, n_beads=12, scale_cv=0.03):
    """Forces of ``n_beads`` beads (scales spread ``scale_cv``) at ``heights``, with
    relative errors growing towards the weak end (3 % at 30 pN, ~25 % at 0.3 pN) as
    short PSD records give them."""
    scale = np.exp(scale_cv * rng.standard_normal(n_beads))
    true = magnet_force_pn(np.asarray(heights), **TRUE)[:, None] * scale[None, :]
    rel = np.clip(0.03 * (30.0 / true) ** 0.45, 0.03, 0.4)
    force = true * np.exp(rel * rng.standard_normal(true.shape))
    return force, rel * force, scale


def test_the_errors_cover_the_truth_68_percent_of_the_time():
    """Curve, scales and each bead's force: their 1-sigma errors cover the truth in 68 %
    of 80 simulated calibrations (+/- 10 %; the binomial noise is +/- 5 %)."""
    from magscope_plans.analysis import fit_ensemble_force

    rng = np.random.default_rng(11)
    heights = [0.8, 2.0, 3.5, 5.0, 6.2, 7.0]
    probe = np.array([1.0, 4.0, 6.5, 7.0])
    curve_covered, bead_covered, scale_covered, n = np.zeros(probe.size), 0, 0, 0
    runs = 80
    for _ in range(runs):
        force, err, scale = _calibration_data(rng, heights)
        fit = fit_ensemble_force(heights, force, err)
        # the curve is the beads' geometric-mean force: so is its truth
        mean_scale = np.exp(np.mean(np.log(scale)))
        true_curve = magnet_force_pn(probe, **TRUE) * mean_scale
        sigma = fit.curve.force_rel_err(probe)
        curve_covered += np.abs(np.log(fit.curve.force_pn(probe) / true_curve)) <= sigma
        scale_covered += int(np.sum(np.abs(fit.bead_scale - scale / mean_scale)
                                    <= fit.bead_scale_err))
        # a bead's force: its scale times the curve, both errors
        got = fit.bead_scale[None, :] * fit.curve.force_pn(probe)[:, None]
        true = scale[None, :] * magnet_force_pn(probe, **TRUE)[:, None]
        bead_sigma = np.hypot(sigma[:, None], (fit.bead_scale_err / fit.bead_scale)[None, :])
        bead_covered += int(np.sum(np.abs(np.log(got / true)) <= bead_sigma))
        n += scale.size
    assert np.all(np.abs(curve_covered / runs - 0.68) < 0.10), curve_covered / runs
    assert abs(scale_covered / n - 0.68) < 0.10, scale_covered / n
    assert abs(bead_covered / (n * probe.size) - 0.68) < 0.10, bead_covered / (n * probe.size)


def test_weighting_every_bead_beats_the_median_at_the_weak_end():
    from magscope_plans.analysis import fit_ensemble_force

    rng = np.random.default_rng(12)
    heights = [0.8, 2.0, 3.5, 5.0, 6.2, 7.0]
    weak = 7.0
    errors_weighted, errors_median = [], []
    for _ in range(30):
        force, err, _ = _calibration_data(rng, heights)
        weighted = fit_ensemble_force(heights, force, err).curve
        median = fit_magnet_force(heights, np.median(force, axis=1))
        truth = magnet_force_pn(weak, **TRUE)
        errors_weighted.append(weighted.force_pn(weak) / truth - 1)
        errors_median.append(median.force_pn(weak) / truth - 1)
    assert np.median(np.abs(errors_weighted)) < 0.8 * np.median(np.abs(errors_median))


def test_the_single_exponential_keeps_a_covariance_and_the_ensemble_refuses_too_few():
    from magscope_plans.analysis import fit_ensemble_force

    z = np.array([1.0, 2.0, 3.0, 4.0])
    rng = np.random.default_rng(2)
    force = 50.0 * np.exp(-z / 1.2) * np.exp(0.02 * rng.standard_normal(4))
    fit = fit_magnet_force(z, force, 0.02 * force)
    assert fit.covariance is not None and fit.covariance.shape == (4, 4)
    assert np.all(np.isfinite(fit.force_rel_err(z))) and np.all(fit.force_rel_err(z) > 0)
    with pytest.raises(ValueError, match="only 1 magnet heights have a usable force"):
        fit_ensemble_force([1.0, 2.0], [[3.0, 2.0], [np.nan, np.nan]], [[0.1, 0.1], [0.1, 0.1]])


def test_the_calibration_keeps_the_fits_errors_and_gives_each_beads(tmp_path):
    from magscope_plans.analysis import fit_ensemble_force

    rng = np.random.default_rng(5)
    heights = [0.8, 2.0, 3.5, 5.0, 6.2, 7.0]
    force, err, _ = _calibration_data(rng, heights, n_beads=3)
    fit = fit_ensemble_force(heights, force, err)
    c = fit.curve
    cal = make_cal(f0_pn=c.f0_pn, a=c.a, l1_mm=c.l1_mm, l2_mm=c.l2_mm,
                   bead_scale=tuple(fit.bead_scale), bead_scale_err=tuple(fit.bead_scale_err),
                   covariance=tuple(map(tuple, c.covariance)))
    z = np.array([1.0, 4.0, 7.5])
    np.testing.assert_allclose(cal.force_err_pn(z), c.force_rel_err(z) * c.force_pn(z))
    # beyond the heights the relative error grows
    assert cal.force_err_pn(7.5) / cal.force_pn(7.5) > cal.force_err_pn(6.0) / cal.force_pn(6.0)
    loaded = ForceCalibration.load(cal.save(tmp_path / "cal.json"))
    assert loaded.covariance == cal.covariance and loaded.bead_scale_err == cal.bead_scale_err
    bead_err = loaded.force_err_pn_for_bead(7, 4.0)
    rel = np.hypot(c.force_rel_err(4.0), fit.bead_scale_err[1] / fit.bead_scale[1])
    assert bead_err == pytest.approx(rel * loaded.force_pn_for_bead(7, 4.0))
    with pytest.raises(KeyError, match="bead 99"):
        loaded.force_err_pn_for_bead(99, 4.0)
    assert math.isnan(make_cal().force_err_pn(4.0))  # no covariance: not known
    with pytest.raises(ValueError, match="covariance must be 4 x 4"):
        make_cal(covariance=((1.0, 0.0), (0.0, 1.0)))
