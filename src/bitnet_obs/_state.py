"""The global-state department: every reset and every fork hook of bitnet-obs goes through here.

bitnet-obs keeps process-wide state in a few leaf modules (running totals, the settings in
force, the health registry, the pipeline). Each registers what to do

- after ``os.fork()`` in the child (``on_fork``): locks a parent thread may have held at fork
  time are re-created, the parent's totals are forgotten, the pipeline is rebuilt;
- on :func:`bitnet_obs.testing.reset` (``on_reset``): back to a fresh process.

One ``os.register_at_fork`` hook runs the fork handlers in registration order. Modules register
when they are imported, and imports point down, so lower modules' handlers (locks, totals) run
before higher ones' (the pipeline), which may use them. Resets run in three phases: ``STOP``
(the pipeline), ``CLEAR`` (running totals and caches), ``RESTORE`` (features back to their
defaults, which may report their counters at 0 again).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any, overload

Hook = Callable[[], None]

STOP, CLEAR, RESTORE = 0, 1, 2

_fork_hooks: list[Hook] = []
_reset_hooks: list[tuple[int, Hook]] = []


def on_fork(hook: Hook) -> Hook:
    """Run ``hook`` in a forked child (decorator); it must not raise."""
    if hook not in _fork_hooks:
        _fork_hooks.append(hook)
    return hook


@overload
def on_reset(hook: Hook, /) -> Hook: ...
@overload
def on_reset(*, phase: int) -> Callable[[Hook], Hook]: ...
def on_reset(hook: Hook | None = None, /, *, phase: int = RESTORE) -> Any:
    """Run ``hook`` on :func:`reset_all`, in its phase (decorator, bare or with ``phase=``)."""

    def register(fn: Hook) -> Hook:
        if (phase, fn) not in _reset_hooks:
            _reset_hooks.append((phase, fn))
        return fn

    return register if hook is None else register(hook)


def reset_all() -> None:
    """Back to a freshly imported state: stop, clear, restore (in registration order within a
    phase)."""
    for _, hook in sorted(_reset_hooks, key=lambda entry: entry[0]):
        hook()


def _after_fork_in_child() -> None:
    for hook in list(_fork_hooks):
        with contextlib.suppress(Exception):  # a hook failing must not stop the others
            hook()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
