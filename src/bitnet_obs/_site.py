"""What one monitored function (or monitor object) resolves once: a :class:`Site`.

Its attributes, counters, span name and content-capture choice are fixed at decoration; the
attribute sets, tally keys and handles of each outcome (a
:class:`~bitnet_obs._recorder.Variant`) are built the first time that outcome happens under a
recorder, and reused by every later call until the instruments are bound again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bitnet_obs import _config, _instruments, _tally
from bitnet_obs import _semconv as sc
from bitnet_obs._facts import OK, Outcome, RequestFacts
from bitnet_obs._recorder import Recorder, Variant
from bitnet_obs._tally import AttrKey, AttrValue

TokenCounter = Callable[[Any], int]

#: (device, outcome, error.type, priority, finish reason) combinations cached per site
MAX_VARIANTS = 256
VariantKey = tuple[str, str, str, "str | None", "str | None"]


class Site:
    """A decorated function's attributes, counters and cached variants."""

    __slots__ = (
        "active_key",
        "attrs",
        "capture_content",
        "client_token_usage",
        "common",
        "count_input",
        "count_item",
        "count_output",
        "counts_by_default",
        "device",
        "finished",
        "kernel",
        "priority",
        "recorder",
        "span_name",
        "variants",
    )

    def __init__(
        self,
        attrs: dict[str, AttrValue],
        span_name: str,
        count_input: TokenCounter | None,
        count_output: TokenCounter | None,
        count_item: TokenCounter | None,
        capture_content: bool | None,
        client_token_usage: bool,
        kernel: str | None = None,
    ) -> None:
        self.attrs = attrs
        self.device = str(attrs["bitnet.device"])
        priority = attrs.get("bitnet.request.priority")
        self.priority = None if priority is None else str(priority)
        self.kernel = kernel  # declared: a call that reports another one fell back
        self.span_name = span_name
        self.count_input = count_input
        self.count_output = count_output
        self.count_item = count_item
        self.counts_by_default = count_input is None and count_output is None
        self.capture_content = capture_content
        self.client_token_usage = client_token_usage
        self.recorder: Recorder | None = None  # the recorder the variants were built for
        self.variants: dict[VariantKey, Variant] = {}
        #: the variant of most calls: ok, on the declared device and priority, no finish reason
        self.common: Variant | None = None
        #: the same with a finish reason (an engine reports one for every call), by reason
        self.finished: dict[str, Variant] = {}
        #: the active-requests series of a call on the declared device and priority
        self.active_key = self.active_key_of(self.device, self.priority)

    def variant_of(self, recorder: Recorder, facts: RequestFacts, outcome: Outcome) -> Variant:
        """The variant a finished call records into (the common one without a lookup)."""
        finish = facts.finish_reason
        if (
            outcome is OK
            and self.recorder is recorder
            and facts.device is self.device
            and facts.priority is self.priority
        ):
            found = self.common if finish is None else self.finished.get(finish)
            if found is not None:
                return found
        variant = self.variant(recorder, facts.device, outcome.kind, outcome.error_type,
                               facts.priority, finish)  # fmt: skip
        if outcome is OK and facts.device == self.device and facts.priority == self.priority:
            if finish is None:
                self.common = variant
            elif len(self.finished) < MAX_VARIANTS:
                self.finished[finish] = variant
        return variant

    def variant(
        self,
        recorder: Recorder,
        device: str,
        outcome: str,
        err: str,
        priority: str | None,
        finish: str | None,
    ) -> Variant:
        """The variant of one outcome under ``recorder`` (built on first use)."""
        if recorder is not self.recorder:  # the instruments were bound again
            self.recorder, self.variants, self.common, self.finished = recorder, {}, None, {}
        key = (device, outcome, err, priority, finish)
        variant = self.variants.get(key)
        if variant is None:
            base, req = self._attribute_sets(*key)
            attrs = dict(base, **{sc.ERROR_TYPE: err}) if err else base
            handles = recorder.request_handles(_instruments.REQUEST_HISTOGRAMS, attrs, base)
            variant = Variant(recorder, base, req, err, handles, self.client_token_usage)
            if len(self.variants) < MAX_VARIANTS:
                self.variants[key] = variant
        return variant

    def active_key_of(self, device: str, priority: str | None) -> AttrKey:
        """The active-requests series of a call on this device and priority."""
        return _tally.key_of(self._attribute_sets(device, "ok", "", priority, None)[0])

    def _attribute_sets(
        self, device: str, outcome: str, err: str, priority: str | None, finish: str | None
    ) -> tuple[dict[str, AttrValue], dict[str, AttrValue]]:
        """(the attributes of every outcome, the request counter's attributes)."""
        base = dict(self.attrs)
        base["bitnet.device"] = device
        if priority is not None:
            base["bitnet.request.priority"] = priority
        req = dict(base, **{"bitnet.outcome": outcome})
        if finish is not None:
            req[sc.FINISH_REASON] = finish
        if err:
            req[sc.ERROR_TYPE] = err
        return base, req

    def declare(self) -> None:
        """Start the site's request counters at 0, so ``rate()`` sees its first error."""
        for outcome in ("ok", "error", "cancelled"):
            req = self._attribute_sets(self.device, outcome, "", self.priority, None)[1]
            _instruments.REQUESTS.tally.declare(_tally.key_of(req))
        _instruments.ACTIVE_REQUESTS.tally.declare(self.active_key)

    def capture(self) -> bool:
        """Whether this site's calls put prompts and responses on their spans."""
        flag = self.capture_content
        return _config.current().capture_content if flag is None else flag
