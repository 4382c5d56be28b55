"""The global-state department: every reset and every fork hook of bitnet-obs goes through here.

bitnet-obs keeps process-wide state in a few leaf modules (running totals, the settings in
force, the health registry, the pipeline). Each registers what to do

- after ``os.fork()`` in the child (``on_fork``): locks a parent thread may have held at fork
  time are re-created, the parent's totals are forgotten, the pipeline is rebuilt;
- on :func:`bitnet_obs.testing.reset` (``on_reset``): back to a fresh process.

One ``os.register_at_fork`` hook runs the fork handlers in registration order. Modules register
when they are imported, and imports point down, so lower modules' handlers (locks, totals) run
before higher ones' (the pipeline), which may use them. Resets run in the reverse order: the
pipeline stops before the totals it reported are cleared.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

Hook = Callable[[], None]

_fork_hooks: list[Hook] = []
_reset_hooks: list[Hook] = []


def on_fork(hook: Hook) -> Hook:
    """Run ``hook`` in a forked child (decorator); it must not raise."""
    if hook not in _fork_hooks:
        _fork_hooks.append(hook)
    return hook


def on_reset(hook: Hook) -> Hook:
    """Run ``hook`` on :func:`reset_all` (decorator)."""
    if hook not in _reset_hooks:
        _reset_hooks.append(hook)
    return hook


def reset_all() -> None:
    """Back to a freshly imported state, highest modules first."""
    for hook in reversed(_reset_hooks):
        hook()


def _after_fork_in_child() -> None:
    for hook in list(_fork_hooks):
        with contextlib.suppress(Exception):  # a hook failing must not stop the others
            hook()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
