"""Shared machinery of the registration stages: input checks, the image pyramid, SimpleITK
metric and optimiser settings, the live tracker (curve + best transform so far) and the
report table."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import Cancelled, GeometryError, ImageError
from ..image import Image
from ..outputs import Curve, Transform, grid_of
from ..stage import publish, report
from ..stage.context import quiet_in_sitk

METRICS = ("mattes_mi", "joint_histogram_mi", "correlation", "mean_squares")
METRIC_NAMES = {"mattes_mi": "Mattes MI", "joint_histogram_mi": "joint-histogram MI",
                "correlation": "normalised correlation", "mean_squares": "mean squares"}
CURVE_LABELS = {"mattes_mi": "−Mattes MI (lower is better)", "joint_histogram_mi": "−joint-histogram MI (lower is better)",
                "correlation": "−correlation² (lower is better)", "mean_squares": "mean squares (lower is better)"}
"""Y axis of the metric curve: ITK minimises, so MI and correlation are reported negated (a
student seeing MI fall below zero is told why at once)."""
OPTIMISERS = ("regular_step", "gradient_descent", "lbfgsb")
LBFGSB_GRADIENT_TOLERANCE = 1e-5
"""L-BFGS-B stops when its projected gradient falls below this × the metric's magnitude at the
start of the level (see :func:`set_optimiser`)."""
SAMPLING = ("regular", "random", "all")
INITIALISATION = ("geometry", "moments", "none")

SEED = 20240611
"""The fixed seed of every random sampling: a registration is deterministic."""

PUBLISH_EVERY = 0.2
"""Seconds between two publications of the best transform so far (the curve: every iteration)."""


# ---------------------------------------------------------------------------- inputs
def check_pair(fixed: Image, moving: Image, stage: str) -> None:
    """Same dimension, and overlapping in physical space (checked here rather than by the
    stage declaration, whose overlap test needs equal dimensions)."""
    if fixed.ndim != moving.ndim:
        raise ImageError(f"{stage}: 'fixed' is a {fixed.ndim}D image and 'moving' a {moving.ndim}D image; "
                         "register images of the same dimension (extract a slice or stack the 2D image first)")
    if not fixed.overlaps(moving):
        raise GeometryError(f"{stage}: 'moving' and 'fixed' do not overlap in physical space (fixed: "
                            f"{fixed.describe()}; moving: {moving.describe()}). Check their origins and "
                            "directions, or give an initial transform that brings them together")
    for name, img in (("fixed", fixed), ("moving", moving)):
        if min(img.size) < 4:
            raise ImageError(f"{stage}: {name!r} has only {min(img.size)} voxel(s) along one axis "
                             f"({img.describe()}); registration needs at least 4")
        a = img.array
        if float(a.max()) == float(a.min()):
            raise ImageError(f"{stage}: {name!r} is constant (every voxel {float(a.min()):g}): there is nothing "
                             "to align")


def to_float(image: Image):
    """A float32 SimpleITK image of ``image`` (geometry kept), with one float32 copy of the
    voxels: other types cross into SimpleITK as they are and are cast there (a uint8 head volume
    then costs one 8 MB and one 35 MB copy, not two of 35 MB)."""
    import SimpleITK as sitk

    arr = np.ascontiguousarray(image.array)
    if arr.dtype.kind not in "iuf" or arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    out = sitk.GetImageFromArray(arr)
    if out.GetPixelID() != sitk.sitkFloat32:
        out = sitk.Cast(out, sitk.sitkFloat32)
    out.SetSpacing(image.spacing)
    out.SetOrigin(image.origin)
    out.SetDirection(tuple(float(v) for v in image.direction.ravel()))
    return out


def centre(image) -> tuple[float, ...]:
    """Physical centre of a SimpleITK image's voxel grid."""
    return image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in image.GetSize()])


# ---------------------------------------------------------------------------- pyramid
MIN_LEVEL_VOXELS = 16
"""No axis of a pyramid level is shrunk below this many voxels.

A coarser level holds too few points for a joint histogram: on the 96×96×48 phantom a
12×12×8-voxel first level (1,152 points for 32×32 bins) sent joint-histogram MI 115 mm away
(``benchmarks/bench_register.py phantom``); at 16 voxels it converged on every seed tried."""


def shrink_factors(image, level_shrink: int, reference_spacing: float) -> list[int]:
    """Per-axis integer factors giving voxels of about ``level_shrink × reference_spacing`` mm:
    an anisotropic axis (thick slices) shrinks less, and no axis is shrunk below
    :data:`MIN_LEVEL_VOXELS` voxels."""
    out = []
    for size, sp in zip(image.GetSize(), image.GetSpacing()):
        f = max(1, round(level_shrink * reference_spacing / sp))
        out.append(int(max(1, min(f, size // MIN_LEVEL_VOXELS))))
    return out


def pyramid_level(image, level_shrink: int, reference_spacing: float, sigma_mm: float):
    """Smooth (recursive Gaussian, σ in mm) then block-average by the level's factors.

    Block averaging (``BinShrink``) is the anti-aliasing here: ITK's registration pyramid
    smooths full-size images with a discrete Gaussian at every level, which took most of
    the time of a whole-head rigid registration (5 s of 6 on a 197×233×189 volume).
    """
    import SimpleITK as sitk

    if sigma_mm > 0:
        image = sitk.SmoothingRecursiveGaussian(image, float(sigma_mm))
    factors = shrink_factors(image, level_shrink, reference_spacing)
    return sitk.BinShrink(image, factors) if max(factors) > 1 else image


def level_sigmas(shrink_factors: Sequence[int], smoothing_mm: Sequence[float], stage: str) -> list[float]:
    """Gaussian σ (mm) of each level: one value per level, or a single value σ scaled by each
    level's shrink factor (σ at full resolution, 2σ at half ...)."""
    from ..errors import ParameterError

    if len(smoothing_mm) == 1:
        return [float(smoothing_mm[0]) * s for s in shrink_factors]
    if len(smoothing_mm) != len(shrink_factors):
        raise ParameterError(f"{stage}: parameter 'smoothing_mm' has {len(smoothing_mm)} values for "
                             f"{len(shrink_factors)} levels (shrink_factors {tuple(shrink_factors)}); give one "
                             "value per level, or a single value (scaled with each level's shrink factor)")
    return [float(v) for v in smoothing_mm]


def merge_levels(image, shrinks: Sequence[int], sigmas: Sequence[float], reference_spacing: float
                 ) -> list[tuple[str, int, float]]:
    """The levels to run: ``(requested factors, factor, σ mm)``. Consecutive levels that give
    the same grid (a small image, where :data:`MIN_LEVEL_VOXELS` caps the coarse factors) run
    once, with the finer level's smoothing: ``(8, 4, 2, 1)`` on 48 voxels runs "8, 4", 2 and 1."""
    out: list[tuple[str, int, float]] = []
    previous = None
    for s, sigma in zip(shrinks, sigmas):
        grid = shrink_factors(image, s, reference_spacing)
        if out and grid == previous:
            label = out[-1][0]
            out[-1] = (f"{label}, {s}", s, float(sigma))
        else:
            out.append((str(s), s, float(sigma)))
        previous = grid
    return out


SHRINK_HELP = ("one resolution level per factor, coarse to fine: level voxels of about factor × the "
               "finest spacing (thick-slice axes shrink less; no axis below 16 voxels)")
SMOOTHING_HELP = ("Gaussian σ (mm) before shrinking: one value per level, or one value for full "
                  "resolution, scaled with each level's shrink factor (0: block averaging only)")


FOREGROUND_THRESHOLD = 0.05
"""Share of the fixed image's robust range (1st–99th percentile) above which a voxel is
foreground (before filling holes and dilating): above the background noise of MR, low enough to
keep dark tissue such as CSF."""


def foreground_mask(image: Image, reference) -> tuple[object, float] | tuple[None, float]:
    """The fixed image's foreground as a SimpleITK mask on ``reference``'s grid: voxels above
    :data:`FOREGROUND_THRESHOLD` of the robust range, holes filled (dark skull and CSF inside
    the head stay in), dilated by 2 voxels (the outer edge is information too). Returns
    ``(mask, fraction of voxels inside)``, or ``(None, 1.0)`` when the foreground is nearly all
    or nearly none of the image (no gain, or a threshold that failed).

    Why: a head volume is half air, where the metric has no gradient; on the deformable
    benchmark phantom (41 % foreground) B-spline samples spread over the whole grid left a
    much larger error than samples in the head."""
    import SimpleITK as sitk

    a = image.array
    lo, hi = np.percentile(a.ravel()[:: max(1, a.size // 200_000)], (1, 99))
    if not hi > lo:
        return None, 1.0
    inside = sitk.GetImageFromArray((a > lo + FOREGROUND_THRESHOLD * (hi - lo)).astype(np.uint8))
    inside.CopyInformation(reference)
    inside = sitk.BinaryDilate(sitk.BinaryFillhole(inside), [2] * a.ndim)
    fraction = float(sitk.GetArrayViewFromImage(inside).mean())
    if not 0.02 < fraction < 0.95:
        return None, 1.0
    return inside, fraction


# ---------------------------------------------------------------------------- settings
JOINT_PDF_VARIANCE = 10.0
"""Variance (bins²) of the Gaussian that smooths the joint histogram of joint-histogram MI.

ITK's default (1.5) leaves the sampled metric too rough for the optimiser: on the phantom T1 ↔
T2 pairs (seeds 3–7) the TRE was 0.6–1.2 mm at 1.5, 0.4 mm at 6 and 0.27–0.37 mm at 10."""


def set_metric(R, metric: str, bins: int) -> None:
    if metric == "mattes_mi":
        R.SetMetricAsMattesMutualInformation(int(bins))
    elif metric == "joint_histogram_mi":
        R.SetMetricAsJointHistogramMutualInformation(int(bins), JOINT_PDF_VARIANCE)
    elif metric == "correlation":
        R.SetMetricAsCorrelation()
    else:
        R.SetMetricAsMeanSquares()


def set_sampling(R, sampling: str, samples: int, percentage: float, n_voxels: int, *, mask=None,
                 mask_fraction: float = 1.0) -> int:
    """Configure the metric's sampling; returns the number of points used per iteration.

    ``percentage`` > 0 samples that share of the level's voxels; otherwise ``samples``
    points (all voxels of a level that has fewer). The seed is fixed: deterministic.
    With a fixed-image ``mask`` (covering ``mask_fraction`` of the voxels), ITK drops the
    sampled points outside it, so the share is raised to keep ``samples`` points inside.
    """
    if mask is not None:
        R.SetMetricFixedMask(mask)
    n_inside = max(1, round(n_voxels * mask_fraction))
    if sampling == "all":
        R.SetMetricSamplingStrategy(R.NONE)
        return int(n_inside)
    fraction = percentage / 100.0 if percentage > 0 else min(1.0, samples / n_inside)
    fraction = min(1.0, max(fraction, 64.0 / n_inside))  # ITK needs a few points to build its histogram
    R.SetMetricSamplingStrategy(R.RANDOM if sampling == "random" else R.REGULAR)
    R.SetMetricSamplingPercentage(float(fraction), SEED)
    # gradients at the sampled points only, not a gradient image of the whole volume
    R.SetMetricUseFixedImageGradientFilter(False)
    R.SetMetricUseMovingImageGradientFilter(False)
    return round(fraction * n_inside)


def set_optimiser(R, optimiser: str, learning_rate: float, iterations: int, *, scales: bool = True,
                  metric_scale: float = 1.0, gradient_tolerance: float = LBFGSB_GRADIENT_TOLERANCE) -> None:
    """Optimiser settings. ``metric_scale`` is the metric's magnitude at the start of the level:
    L-BFGS-B's gradient tolerance is absolute, so it is taken relative to that magnitude (mean
    squares of intensities in [0, 1] starts near 1e-3, and a fixed 1e-5 stopped a B-spline
    registration after one iteration per level)."""
    if optimiser == "regular_step":
        R.SetOptimizerAsRegularStepGradientDescent(learning_rate, learning_rate * 1e-4, iterations,
                                                   relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8)
    elif optimiser == "gradient_descent":
        R.SetOptimizerAsGradientDescent(learning_rate, iterations, 1e-6, 10, R.EachIteration, learning_rate)
    else:
        R.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=gradient_tolerance * metric_scale,
                               numberOfIterations=iterations,
                               maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=4 * iterations,
                               costFunctionConvergenceFactor=1e7)
        return
    if scales:
        R.SetOptimizerScalesFromPhysicalShift()


def metric_magnitude(R, fixed, moving, stage: str) -> float:
    """|metric| at the start transform (one evaluation, on one thread like the optimisation);
    1.0 when it is zero or cannot be evaluated (the optimisation then reports why)."""
    import SimpleITK as sitk

    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        value = abs(float(R.MetricEvaluate(fixed, moving)))
    except RuntimeError:
        return 1.0
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    return value if math.isfinite(value) and value > 0 else 1.0


# ---------------------------------------------------------------------------- live tracking
@dataclass
class Tracker:
    """Follows an optimisation: the metric curve (one series per level) and the best
    parameters of the current level, published live; on Cancel, the best so far is kept.

    ``make`` turns optimiser parameters into the full fixed→moving SimpleITK transform.
    """

    curve: Curve
    make: Callable[[Sequence[float]], object]
    fixed: dict
    moving: dict
    name: str
    large: bool = False  # many parameters (B-spline): build the transform at most every PUBLISH_EVERY s
    level: int = -1
    best_value: float = math.inf
    best_params: tuple | None = None
    previous: tuple | None = None
    published_params: tuple | None = None
    last_publish: float = -math.inf
    cancelled: bool = False
    error: BaseException | None = None
    iterations: int = 0
    extra: dict = field(default_factory=dict)

    def command(self, callback: Callable[[], None]) -> Callable[[], None]:
        """``callback`` as a SimpleITK command. SimpleITK turns whatever a command raises into
        a RuntimeError: keep what it was (a Ctrl-C stays a KeyboardInterrupt, not "registration
        failed"); :meth:`raise_kept` raises it again once ``Execute`` has returned."""
        def run() -> None:
            try:
                callback()
            except BaseException as exc:  # noqa: BLE001 - raised again, marked
                if not isinstance(exc, Cancelled):
                    self.error = exc
                raise quiet_in_sitk(exc)
        return run

    def raise_kept(self) -> None:
        """After an ITK failure: raise :class:`Cancelled` when the user cancelled, or what a
        command raised (KeyboardInterrupt ...); return when the failure was ITK's own."""
        if self.cancelled:
            raise Cancelled("registration cancelled by the user; the best result so far is kept") from None
        if self.error is not None:
            raise self.error.with_traceback(None) from None

    def start_level(self, level: int, params: Sequence[float]) -> None:
        self.level = level
        self.best_value = math.inf
        self.best_params = None
        self.previous = tuple(params)

    def transform(self, params: Sequence[float] | None = None) -> Transform:
        params = self.best_params if params is None else params
        return Transform(self.make(params), fixed=self.fixed, moving=self.moving, name=self.name)

    def step(self, iteration: int, value: float, position: Sequence[float] | None, fraction: float) -> None:
        """One optimiser iteration. ITK reports the metric of the position *before* the step
        and the position *after* it, so the value is paired with the previous position."""
        evaluated = self.previous
        if position is not None:
            self.previous = tuple(position)
        self.iterations += 1
        if math.isfinite(value):
            self.curve.append(f"level {self.level + 1}", iteration, value)
            if value < self.best_value and evaluated is not None:
                self.best_value, self.best_params = value, evaluated
        self.publish(fraction)

    def publish(self, fraction: float, *, force: bool = False, **values) -> None:
        values = {"history": self.curve, **values}
        now = time.monotonic()
        # building a Transform costs more than a rigid iteration: at most every PUBLISH_EVERY s
        # (Cancel still keeps the exact best: see the except clause)
        due = force or now - self.last_publish >= PUBLISH_EVERY
        if self.best_params is not None and self.best_params is not self.published_params and due:
            values["transform"] = self.transform()
            self.published_params, self.last_publish = self.best_params, now
        try:
            report(fraction, f"level {self.level + 1}")
            publish(**values)
        except Cancelled:
            self.cancelled = True
            if self.best_params is not None and self.best_params is not self.published_params:
                publish(transform=self.transform())  # keep the very best; raises Cancelled again
            raise


def run_level(R, fixed, moving, tracker: Tracker, stage: str):
    """``R.Execute`` with cancellation turned back into :class:`Cancelled` and ITK failures
    into :class:`ImageError`."""
    import SimpleITK as sitk

    # ITK's metrics read the global thread count when Execute builds them, and sum their
    # threads' parts in a run-dependent order (differences of 1e-10 that break bit-identical
    # replay): optimise on one thread; pyramid and resampling stay multi-threaded
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        return R.Execute(fixed, moving)
    except RuntimeError as exc:
        tracker.raise_kept()
        message = str(exc).strip().splitlines()[-1]
        if "Too many samples map outside moving image buffer" in str(exc) or "All samples map outside" in str(exc):
            raise GeometryError(f"{stage}: the images stopped overlapping during the registration (too few "
                                "fixed points fall inside the moving image). Start closer (initialisation "
                                "'moments', or an initial transform from landmarks) or lower the learning rate") from None
        raise ImageError(f"{stage}: SimpleITK registration failed: {message}") from None
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def stop_reason(R) -> str:
    """The optimiser's stop condition in words. ITK's L-BFGS-B says "User requested" when it
    reaches its largest number of iterations (a Cancel never gets here: it raises Cancelled),
    which misleads: say what happened."""
    text = R.GetOptimizerStopConditionDescription()
    text = text.split(": ", 1)[-1].strip() if text else ""
    if text.startswith("User requested"):
        return "largest number of iterations reached: not converged, raise 'iterations' if the curve still fell"
    return text


def report_table(rows: list[dict], title: str):
    from ..outputs import Table

    return Table(rows, units={"time": "s", "final metric": "", "voxel size": "mm", "smoothing": "mm", "grid": "mm"}, title=title)


def grids(fixed: Image, moving: Image) -> tuple[dict, dict]:
    return grid_of(fixed), grid_of(moving)


def registered_image(moving: Image, fixed: Image, transform, *, moving_sitk=None) -> Image:
    """The moving image resampled on the fixed grid through ``transform`` (linear); voxels
    outside the moving image take its smallest value."""
    import SimpleITK as sitk

    fill = float(np.min(moving.array))
    src = to_float(moving) if moving_sitk is None else moving_sitk
    out = resample_onto(src, fixed, transform, sitk.sitkLinear, fill, sitk.sitkFloat32)
    return Image.from_sitk(out, metadata={**moving.metadata, "registered_to": fixed.metadata.get("source", "fixed")})


def resample_onto(image, reference: Image, transform, interpolator, default: float, pixel_type):
    """SimpleITK resampling onto the grid of ``reference`` (its geometry only: no voxel copy)."""
    import SimpleITK as sitk

    return sitk.Resample(image, [int(v) for v in reference.size], transform, interpolator,
                         [float(v) for v in reference.origin], [float(v) for v in reference.spacing],
                         [float(v) for v in reference.direction.ravel()], float(default), pixel_type)
