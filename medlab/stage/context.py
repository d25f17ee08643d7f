"""What a running stage tells whoever runs it: progress, cancellation and live results, routed
by :func:`progress_to` (a widget, tqdm and a log in a script, the case record in a cohort)."""

from __future__ import annotations

import contextlib
import math
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import Any

from ..errors import Cancelled, ImageError

_progress_cb: ContextVar[Callable[[float, str], None] | None] = ContextVar("medlab_progress", default=None)
_cancel: ContextVar[threading.Event | None] = ContextVar("medlab_cancel", default=None)
_publish_cb: ContextVar[Callable[[str, dict], None] | None] = ContextVar("medlab_publish", default=None)


@contextlib.contextmanager
def progress_to(callback: Callable[[float, str], None] | None, cancel: threading.Event | None = None, *,
                publish: Callable[[str, dict], None] | None = None):
    """Send what stages run inside the block report to the caller.

    Parameters
    ----------
    callback : callable or None
        ``callback(fraction, message)`` for progress (a widget bar, a log line).
    cancel : threading.Event, optional
        When set (from another thread), the running stage raises
        :class:`~medlab.errors.Cancelled` at its next progress step or :func:`publish`.
    publish : callable, optional
        ``publish(stage_name, {name: value})`` for live intermediate results (a metric
        curve, the current transform, a partial label map): a widget plots them, a cohort run
        keeps them in the case record. Without it, they are logged (see :func:`publish`).
    """
    t1, t2, t3 = _progress_cb.set(callback), _cancel.set(cancel), _publish_cb.set(publish)
    try:
        yield
    finally:
        _progress_cb.reset(t1)
        _cancel.reset(t2)
        _publish_cb.reset(t3)


class _Live:
    """The latest values a running stage published (what Cancel keeps for ``keeps_best``)."""

    def __init__(self, stage: str):
        self.stage = stage
        self.values: dict[str, Any] = {}
        self.logged_at = -math.inf


_live: ContextVar[_Live | None] = ContextVar("medlab_live", default=None)
LOG_EVERY = 2.0
"""Seconds between two log lines of live results in a script (no receiver set)."""


def publish(**values) -> None:
    """Publish intermediate results of the running stage: the metric so far, the current
    transform, a training epoch's loss, a partial label map.

    Whoever runs the stage decides where they go (:func:`progress_to` ``publish=``): a widget
    plots them while the work runs, a cohort run keeps them in the case record, and a plain
    script logs them (logger ``medlab.live``, INFO, at most one line every :data:`LOG_EVERY`
    seconds per stage). Values published under the name of a declared output are what Cancel
    keeps when the stage is declared ``keeps_best=True``, so publish your *best* so far under
    those names. Cancellation is honoured here too.

    Examples
    --------
    >>> from medlab.outputs import Curve
    >>> curve = Curve("metric", x_label="iteration")
    >>> for i in range(3):                        # inside a stage's loop
    ...     curve.append("level 1", i, -0.1 * i)
    ...     publish(history=curve)
    """
    live = _live.get()
    if live is not None:
        live.values.update(values)
    cb = _publish_cb.get()
    if cb is not None:
        cb(live.stage if live is not None else "", values)
    elif live is not None:
        _log_live(live, values)
    check_cancelled()


def _log_live(live: _Live, values: dict) -> None:
    """The first publication of a run, then at most one every LOG_EVERY seconds."""
    import logging
    import time

    now = time.monotonic()
    if now - live.logged_at < LOG_EVERY:
        return
    live.logged_at = now
    from ..outputs import describe_value

    text = "; ".join(f"{k}: {describe_value(v)}" for k, v in values.items())
    logging.getLogger("medlab.live").info("%s %s", live.stage, text)


@contextlib.contextmanager
def progress_span(start: float, stop: float):
    """Map the progress reported inside the block onto ``[start, stop]`` of the caller's bar
    (for a stage made of several steps)."""
    outer = _progress_cb.get()
    if outer is None:
        yield
        return
    token = _progress_cb.set(lambda fraction, message: outer(start + (stop - start) * fraction, message))
    try:
        yield
    finally:
        _progress_cb.reset(token)


def log_progress(logger=None, *, every: float = 0.25) -> Callable[[float, str], None]:
    """A progress callback for batch runs: logs at every ``every`` fraction (INFO level).

    >>> import logging
    >>> from medlab.stage import log_progress, progress_to
    >>> with progress_to(log_progress(logging.getLogger("cohort"))):   # doctest: +SKIP
    ...     recipe.run(image)
    """
    import logging

    logger = logger or logging.getLogger("medlab")
    last = {"step": 0}

    def callback(fraction: float, message: str) -> None:
        step = int(fraction / every)
        if step > last["step"]:
            last["step"] = step
            logger.info("%s %3.0f%%", message or "progress", 100 * fraction)

    return callback


def check_cancelled() -> None:
    """Raise :class:`Cancelled` if the caller asked to stop."""
    ev = _cancel.get()
    if ev is not None and ev.is_set():
        raise Cancelled("cancelled by the user; the input is unchanged")


def report(fraction: float, message: str = "") -> None:
    """Report progress (0..1) to whoever runs the stage, and honour cancellation."""
    check_cancelled()
    cb = _progress_cb.get()
    if cb is not None:
        cb(min(max(float(fraction), 0.0), 1.0), message)


def progress(iterable: Iterable, total: int | None = None, desc: str = "") -> Iterator:
    """Iterate with progress and cancellation: a widget bar, or tqdm in a script.

    >>> from medlab.stage import progress
    >>> sum(progress(range(3), desc="demo"))  # doctest: +SKIP
    3
    """
    if total is None:
        total = len(iterable) if hasattr(iterable, "__len__") else None
    cb = _progress_cb.get()
    if cb is None:
        from tqdm.auto import tqdm

        # delay: no bar for work that finishes in under half a second (a slice preview)
        iterable = tqdm(iterable, total=total, desc=desc, leave=False, delay=0.5,
                        disable=total is not None and total < 2)
    for i, item in enumerate(iterable):
        check_cancelled()
        yield item
        if cb is not None and total:  # without a length there is no fraction to report
            cb(min((i + 1) / total, 1.0), desc)


def quiet_in_sitk(exc: BaseException) -> BaseException:
    """Mark ``exc``, raised inside a SimpleITK command, so that SimpleITK does not print it.

    SimpleITK prints whatever a Python command raises (``PyErr_Print``, through
    ``sys.excepthook``) before turning it into a RuntimeError, so every Cancel printed a
    ``Cancelled`` traceback into the notebook. medlab raises the kept exception again after
    ``Execute`` returns, so nothing is lost by not printing it there.
    """
    exc.__medlab_in_sitk__ = True
    hook = sys.excepthook
    if not getattr(hook, "__medlab_quiet__", False):
        def quiet(kind, value, tb, _previous=hook):
            if not getattr(value, "__medlab_in_sitk__", False):
                _previous(kind, value, tb)
        quiet.__medlab_quiet__ = True
        sys.excepthook = quiet
    return exc


def execute_sitk(filt, *inputs, iterations: int | None = None):
    """Run a SimpleITK filter with progress reported and cancellation honoured.

    Progress comes from the filter's progress events, or, for iterative filters that report
    none (N4), from its iteration events counted against ``iterations``. Cancellation calls
    ``Abort()`` and also raises inside the callback, which stops filters that ignore Abort.
    """
    import SimpleITK as sitk

    state = {"cancelled": False, "count": 0, "error": None}

    def check():
        ev = _cancel.get()
        if ev is not None and ev.is_set():
            state["cancelled"] = True
            filt.Abort()
            raise quiet_in_sitk(Cancelled("cancelled by the user"))  # SimpleITK turns this into a RuntimeError

    def kept(callback):
        """SimpleITK turns whatever a command raises into a RuntimeError: keep what it was (a
        Ctrl-C is a KeyboardInterrupt, not "the filter failed")."""
        def command():
            try:
                callback()
            except BaseException as exc:  # noqa: BLE001 - raised again, marked
                if not isinstance(exc, Cancelled):
                    state["error"] = exc
                    filt.Abort()
                raise quiet_in_sitk(exc)
        return command

    def on_progress():
        check()
        cb = _progress_cb.get()
        if cb is not None and iterations is None:
            cb(filt.GetProgress(), filt.GetName())

    def on_iteration():
        check()
        state["count"] += 1
        cb = _progress_cb.get()
        if cb is not None and iterations:
            cb(min(state["count"] / iterations, 1.0), filt.GetName())

    filt.AddCommand(sitk.sitkProgressEvent, kept(on_progress))
    filt.AddCommand(sitk.sitkIterationEvent, kept(on_iteration))
    try:
        return filt.Execute(*inputs)
    except RuntimeError as exc:
        if state["cancelled"]:
            raise Cancelled("cancelled by the user; the input is unchanged") from None
        if state["error"] is not None:
            raise state["error"].with_traceback(None) from None
        raise ImageError(f"{filt.GetName()} failed: {str(exc).strip().splitlines()[-1]}") from exc
    finally:
        filt.RemoveAllCommands()
