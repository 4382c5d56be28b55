"""A tiny greedy "BitNet" for cross-validation tests, with switchable faults.

Ternary layers run with int8 activations through ``bitnet_obs.quant.matmul`` (the I2_S kernel
emulation) and a float LM head. Faults are the failure shapes seen in bitnet.cpp's tracker:

* ``"sign"``: a kernel with a flipped sign (every ternary matmul output negated);
* ``"constant"``: a kernel that emits one token whatever the input ("!!!!");
* ``"nan"``: a kernel whose outputs are NaN (what an uninitialised or overflowing kernel
  gives): the logits are NaN and argmax picks id 0.

Module-level functions serve the CLI tests as ``tests._support.tiny_model:generate``.
"""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt

from bitnet_obs import quant

FAULTS = (None, "sign", "constant", "nan")


class TinyModel:
    def __init__(self, vocab: int = 64, hidden: int = 64, layers: int = 2, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.vocab = vocab
        self.embed = rng.standard_normal((vocab, hidden)).astype(np.float32)
        weights = [
            (rng.standard_normal((hidden, hidden)) / np.sqrt(hidden)).astype(np.float32)
            for _ in range(layers)
        ]
        self.layers = [quant.quantize_weights(w) for w in weights]
        self.head = rng.standard_normal((hidden, vocab)).astype(np.float32)
        self.fault: str | None = None
        self.lock = threading.Lock()

    def logits(self, token: int, fault: str | None) -> npt.NDArray[np.float32]:
        x = self.embed[token][None, :]
        for codes, scale in self.layers:
            y = quant.matmul(x, codes, scale, format="i2_s")
            if fault == "sign":
                y = -y

            h = np.maximum(y, 0.0) + 0.1 * x
            x = (h / (np.sqrt(np.mean(h * h)) + 1e-6)).astype(np.float32)
        out: npt.NDArray[np.float32] = (x @ self.head)[0]
        if fault == "nan":
            out = np.full(self.vocab, np.nan, np.float32)
        if fault == "constant":
            out = np.full(self.vocab, -10.0, np.float32)
            out[0] = 10.0
        return out

    def generate(
        self, prompt_ids: list[int], max_new_tokens: int
    ) -> tuple[list[int], npt.NDArray[np.float32]]:
        """Greedy decoding; returns the new ids and the logits of every step."""
        fault = self.fault
        token, ids, steps = prompt_ids[-1], [], []
        for _ in range(max_new_tokens):
            logits = self.logits(token, fault)
            token = int(np.argmax(logits))
            ids.append(token)
            steps.append(logits)
        return ids, np.stack(steps)


MODEL = TinyModel()
PROMPTS = [[1, 2, 3], [5, 8, 13, 21], [42], [7, 7, 7, 9], [60, 3]]


def generate(prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], np.ndarray]:
    return TinyModel().generate(prompt_ids, max_new_tokens)


def generate_ids_only(prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    return TinyModel().generate(prompt_ids, max_new_tokens)[0]


def generate_sign_flipped(
    prompt_ids: list[int], max_new_tokens: int
) -> tuple[list[int], np.ndarray]:
    model = TinyModel()
    model.fault = "sign"
    return model.generate(prompt_ids, max_new_tokens)


def generate_constant(prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], np.ndarray]:
    model = TinyModel()
    model.fault = "constant"
    return model.generate(prompt_ids, max_new_tokens)


def generate_nan(prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], np.ndarray]:
    model = TinyModel()
    model.fault = "nan"
    return model.generate(prompt_ids, max_new_tokens)


def generate_exits(prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """User code calling sys.exit(0) inside a run: the gate must not exit 0."""
    raise SystemExit(0)


def generate_interrupted(prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    raise KeyboardInterrupt


def generate_noisy(prompt_ids: list[int], max_new_tokens: int) -> list[str]:
    print("loading weights...")  # chatter on stdout must not spoil --json
    return ["not", "ids"]


def raises_on_import() -> None:  # pragma: no cover - referenced by name only
    raise AssertionError


class Broken:
    """For MODULE:Class.method specs."""

    @staticmethod
    def generate(prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        raise RuntimeError("kernel not built for this CPU")
