"""One ``generate()`` call: its arguments read once, its tokens counted from the tensors.

Input tokens come from ``input_ids`` (or ``inputs_embeds``) per batch row, without the left
padding that ``attention_mask`` (or, lacking one, the pad token, as ``generate`` infers it)
marks; a call with neither starts each row from the BOS token ``generate`` creates, which
counts as one input token per row and is not output. Output tokens are the new tokens each
returned row really got: up to and including its first EOS token, never the padding after it.
The first token's moment comes from a stopping criterion appended to the call, which the
decoding loop consults after every new token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.hooks import RemovableHandle
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList

from bitnet_obs import InferenceContext, InferenceMonitor
from bitnet_obs import _semconv as sc
from bitnet_obs._selfmon import internal_error

# generate(inputs, generation_config, logits_processor, stopping_criteria, ..., streamer, ...)
_GENERATION_CONFIG_ARG = 1
#: Sampling parameters of a sampled call, as generation settings and span attributes.
_SAMPLING = (
    ("temperature", sc.REQUEST_TEMPERATURE),
    ("top_p", sc.REQUEST_TOP_P),
    ("top_k", sc.REQUEST_TOP_K),
)
_STOPPING_CRITERIA_ARG = 3
_STREAMER_ARG = 7

Ids = npt.NDArray[np.int64]


class FirstToken(StoppingCriteria):
    """Marks the call's first token when the loop first checks for a stop; never stops it.

    On an accelerator the first check waits for the device once, so time to first token is the
    prefill's real end rather than the moment its kernels were queued (the loop synchronizes
    right after every check anyway).
    """

    def __init__(self) -> None:
        self.call: InferenceContext | None = None
        self.first = True
        self.stream = False  # a streamer is attached: every step is a streamed token

    def __deepcopy__(self, memo: dict[int, Any]) -> FirstToken:
        return self  # a copied criteria list must not copy the monitored call

    def __call__(
        self, input_ids: torch.LongTensor, scores: Any = None, **kwargs: Any
    ) -> torch.BoolTensor:
        call = self.call
        if call is not None:
            if self.first:
                self.first = False
                if not self.stream:
                    self.call = None
                try:
                    if input_ids.device.type not in ("cpu", "meta"):
                        torch.accelerator.synchronize(input_ids.device)
                except Exception as exc:  # a device the accelerator API does not know: no wait
                    internal_error("hf_first_token", exc)
                call.first_token()  # never raises
            if self.stream:
                call.mark_token()  # each step's gap: inter-token latency (never raises)
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        return cast(torch.BoolTensor, done)


def _token_ids(value: object) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor) and value.dim() == 2 and not value.is_floating_point():
        return value
    return None


def _id_list(value: object) -> list[int]:
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.reshape(-1).tolist()]
    if isinstance(value, int):
        return [value]
    return [int(v) for v in cast(Sequence[int], value)]


def _batch_size(kwargs: dict[str, Any]) -> int:
    """The batch generate() infers without ids: the first tensor argument's rows, else 1."""
    for value in kwargs.values():
        if isinstance(value, torch.Tensor):
            return int(value.shape[0]) if value.dim() else 1
    return 1


class GenerateCall:
    """What one call resolved before it runs, and its accounting once it returned."""

    def __init__(
        self,
        model: Any,
        monitor: InferenceMonitor,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timed: bool,
    ) -> None:
        self.monitor = monitor
        config = kwargs.get("generation_config")
        if config is None and len(args) > _GENERATION_CONFIG_ARG:
            config = args[_GENERATION_CONFIG_ARG]
        self._config = config if config is not None else getattr(model, "generation_config", None)
        self._kwargs = self.kwargs = kwargs
        inputs = args[0] if args else kwargs.get("inputs")
        if inputs is None:
            inputs = kwargs.get(getattr(model, "main_input_name", "input_ids"))
        ids = _token_ids(inputs)
        self.ids = ids if ids is not None else _token_ids(kwargs.get("input_ids"))
        self.eos = _id_list(self._setting("eos_token_id"))
        pads = _id_list(self._setting("pad_token_id")) or self.eos  # generate() does the same
        self.pad: int | None = pads[0] if pads else None
        # No ids and no embeddings: generate() starts each row from a BOS token of its own,
        # (batch, 1), and returns it as the first column. That BOS is the input, not output.
        self.bos_rows = 0
        if getattr(model.config, "is_encoder_decoder", False):
            decoder_ids = _token_ids(kwargs.get("decoder_input_ids"))
            self.prompt_len = 1 if decoder_ids is None else int(decoder_ids.shape[1])
        elif self.ids is None and inputs is None and kwargs.get("inputs_embeds") is None:
            self.prompt_len, self.bos_rows = 1, _batch_size(kwargs)
        else:
            self.prompt_len = 0 if self.ids is None else int(self.ids.shape[1])
        self.criterion: FirstToken | None = None
        self.args = args
        if timed and kwargs.get("cache_implementation") != "paged":  # paged: no criteria
            self.criterion = FirstToken()
            if len(args) > _STOPPING_CRITERIA_ARG:
                mutable = list(args)
                mutable[_STOPPING_CRITERIA_ARG] = self._criteria(args[_STOPPING_CRITERIA_ARG])
                self.args = tuple(mutable)
            else:
                kwargs["stopping_criteria"] = self._criteria(kwargs.get("stopping_criteria"))
        self.streamer = kwargs.get("streamer")
        if self.streamer is None and len(args) > _STREAMER_ARG:
            self.streamer = args[_STREAMER_ARG]

    def _setting(self, name: str) -> Any:
        if name in self._kwargs:
            return self._kwargs[name]
        return getattr(self._config, name, None)

    def _criteria(self, given: Any) -> StoppingCriteriaList:
        """The caller's criteria (never mutated) plus ours, last."""
        return StoppingCriteriaList([*(given or ()), self.criterion])

    # ----- inside the monitored call -----
    def begin(self, call: InferenceContext, attach: Callable[[], list[RemovableHandle]]) -> Any:
        """Count input tokens, set span attributes, hook sampled layers; returns the handles."""
        if self.criterion is not None:
            self.criterion.call = call
            self.criterion.stream = self.streamer is not None
        try:
            call.add_input_tokens(self._input_tokens())
            max_new = self._setting("max_new_tokens")
            if type(max_new) is int:
                call.set_attribute(sc.REQUEST_MAX_TOKENS, max_new)
            choices = self._setting("num_return_sequences")
            if type(choices) is int and choices > 1:
                call.set_attribute(sc.REQUEST_CHOICE_COUNT, choices)
            if self._setting("do_sample"):
                for key, name in _SAMPLING:
                    value = self._setting(key)
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        if name == sc.REQUEST_TOP_K:  # an int in the conventions (since #217)
                            if value != int(value):
                                continue
                            value = int(value)
                        else:  # temperature and top_p: doubles, whatever the caller passed
                            value = float(value)
                        call.set_attribute(name, value)
        except Exception as exc:
            internal_error("hf_input_tokens", exc)
        try:
            return attach()
        except Exception as exc:
            internal_error("hf_fidelity_attach", exc)
            return []

    def _input_tokens(self) -> int:
        if self.bos_rows:
            return self.bos_rows  # one BOS per row, made by generate()
        mask = self._kwargs.get("attention_mask")
        ids = self.ids
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            return int(mask.sum())
        if ids is not None:
            pad = self.pad
            if pad is not None and pad not in self.eos and bool((ids == pad).any()):
                return int((ids != pad).sum())  # generate() infers the mask the same way
            return int(ids.numel())
        embeds = self._kwargs.get("inputs_embeds")
        if isinstance(embeds, torch.Tensor) and embeds.dim() == 3:
            return int(embeds.shape[0] * embeds.shape[1])
        return 0

    def finish(self, call: InferenceContext, result: Any) -> None:
        """Count (and report) the new tokens of every returned row, and why generation ended."""
        try:
            sequences = result if isinstance(result, torch.Tensor) else result.sequences
            if not isinstance(sequences, torch.Tensor) or sequences.dim() != 2:
                return
            new = sequences[:, self.prompt_len :]
            rows = new_tokens(new, self.eos, self.pad)
            report_output(call, rows)
            call.set_finish_reason(finish_reason(rows, int(new.shape[1]), self.eos, self._limit()))
        except Exception as exc:
            internal_error("hf_output_tokens", exc)

    def _limit(self) -> int | None:
        """New tokens allowed: ``max_new_tokens``, else what ``max_length`` leaves."""
        max_new = self._setting("max_new_tokens")
        if isinstance(max_new, int):
            return max_new
        max_length = self._setting("max_length")
        return max_length - self.prompt_len if isinstance(max_length, int) else None


def finish_reason(rows: list[Ids], width: int, eos: Sequence[int], limit: int | None) -> str:
    """``length`` when a row ran to the token limit without an EOS, else ``stop`` (every row
    ended on EOS, a stop string or another criterion). One reason per call: the semantic
    conventions' per-choice list needs a list-valued report the monitored call does not take."""
    for row in rows:
        ended_on_eos = len(row) > 0 and int(row[-1]) in eos
        if not ended_on_eos and len(row) == width and (limit is None or width >= limit):
            return "length"
    return "stop"


def new_tokens(new: torch.Tensor, eos: Sequence[int], pad: int | None) -> list[Ids]:
    """Each row's generated ids: through its first EOS; without one, less trailing padding.

    A finished row is padded with ``pad`` (the EOS token when the model has no pad token), so a
    row with no EOS but trailing pad tokens stopped on another criterion (stop strings).
    """
    ids: Ids = new.detach().to("cpu", torch.int64).numpy()
    rows, width = ids.shape
    length = np.full(rows, width, dtype=np.int64)
    if width and eos:
        hit = ids == eos[0]
        for token in eos[1:]:  # one or a few ids: cheaper than np.isin
            hit |= ids == token
        first = hit.argmax(axis=1)
        found = hit[np.arange(rows), first]
        length[found] = first[found] + 1
        if pad is not None and pad not in eos:
            tail = np.cumprod((ids == pad)[:, ::-1], axis=1).sum(axis=1)
            length[~found] -= tail[~found]
    return [ids[r, : length[r]] for r in range(rows)]


def report_output(call: InferenceContext, rows: list[Ids]) -> None:
    """The generated ids of every row: counted, and judged for degenerate output one row at a
    time (the ids never leave the process)."""
    call.add_output_ids(rows)
