"""OpenVINO, decoder-only language models: the stateful KV-cache IR behind the session API.

optimum-intel exports `text-generation-with-past` as a *stateful* model: the KV cache is
internal state, and the inputs are input_ids, attention_mask (past + new tokens),
position_ids and beam_idx. The state must be reset before every new sequence.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeport.runners import ondevice

if TYPE_CHECKING:
    from edgeport.backends import Feeds


def _names(ports: Any) -> tuple[str, ...]:
    return tuple(port.get_any_name() for port in ports)


def is_stateful_decoder(model: Any) -> bool:
    return "beam_idx" in _names(model.inputs) or bool(model.get_variables())


def calibration_items(model: Any, calibration: Sequence[Feeds]) -> list[dict[str, np.ndarray]]:
    """Full-window calibration inputs for NNCF (it resets the state before each item)."""
    names = _names(model.inputs)
    items = []
    for feeds in calibration:
        if "input_ids" not in feeds:
            continue
        ids = np.asarray(feeds["input_ids"], dtype=np.int64)
        mask = np.asarray(feeds.get("attention_mask", np.ones_like(ids)), dtype=np.int64)
        items.append(ondevice.decoder_feeds(list(names), ids, mask))
    return items


class OpenVinoDecoderSession:
    """`run` scores a full window (fresh state); `generate` decodes greedily as run.py does
    (ondevice.OpenVinoLanguageModel: the prompt's graph, then a one-token graph)."""

    def __init__(self, model: Any, config: Mapping[str, Any]) -> None:
        self._model = ondevice.OpenVinoLanguageModel(model, "CPU", config)
        self._model.warm_up()  # as run.py does: timings here then match the bundle's
        self.input_names = tuple(self._model.input_names)
        self.output_names = ("logits",)
        self._request = self._model.request

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = np.asarray(feeds["input_ids"], dtype=np.int64)
        mask = np.asarray(feeds.get("attention_mask", np.ones_like(ids)), dtype=np.int64)
        self._request.reset_state()
        # Shared, as `generate` feeds it: a request whose inputs were numpy views cannot
        # copy a longer window into them.
        self._request.infer(
            ondevice.decoder_feeds(list(self.input_names), ids, mask), share_inputs=True
        )
        return {"logits": np.array(self._request.get_tensor("logits").data, copy=True)}

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int) -> list[int]:
        return list(itertools.islice(self._model.tokens(prompt_ids), max_new_tokens))
