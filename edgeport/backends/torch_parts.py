"""Export the parts of a multi-part model: one method of the task's PyTorch model each.

optimum exports CLIP and SigLIP as one graph that needs images *and* texts on every call;
a device wants to embed its label prompts once and then run only the image tower per
camera frame. optimum's exporters cannot split these models (`main_export` only splits
MetaCLIP 2; see docs/research/multi-part-artifacts.md), so each part is traced here from
a thin wrapper that calls the method the family names (`get_image_features`,
`get_text_features`) on the very model object the reference outputs come from
(TasksManager.get_model_from_task, as validate.ReferenceModel loads it). Shapes stay
dynamic: a text tower traced on one short prompt runs on batches of any length.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeport.errors import UnsupportedError

if TYPE_CHECKING:
    from edgeport.backends import PartSource
    from edgeport.schemas import ModelInfo

ONNX_OPSET = 17
# Dynamic axes of each input a part may take: batch, then tokens for text.
_DYNAMIC_AXES: dict[str, dict[int, str]] = {
    "pixel_values": {0: "batch"},
    "input_ids": {0: "batch", 1: "sequence"},
    "attention_mask": {0: "batch", 1: "sequence"},
}


def task_model(model: ModelInfo, *, trust_remote_code: bool) -> Any:
    """The task's PyTorch model, loaded the way optimum exports it: the reference
    outputs (validate.ReferenceModel) and the exported parts come from this one loader."""
    from optimum.exporters.tasks import TasksManager

    loaded = TasksManager.get_model_from_task(
        model.task,
        str(model.local_path),
        library_name="transformers",
        framework="pt",
        trust_remote_code=trust_remote_code,
        local_files_only=True,
    )
    loaded.eval()
    return loaded


def _wrapper(model: Any, part: PartSource) -> Any:
    import torch

    method: Callable[..., Any] | None = getattr(model, part.method, None)
    if method is None:
        raise UnsupportedError(
            f"{type(model).__name__} has no {part.method}() for part {part.name}"
        )

    call: Callable[..., Any] = method

    class Part(torch.nn.Module):  # positional inputs, in part.input_names order
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args: Any) -> Any:
            output = call(**dict(zip(part.input_names, args, strict=True)))
            # transformers 4.57 returns a tensor; later versions may return an output object.
            return output if isinstance(output, torch.Tensor) else output[0]

    return Part().eval()


def example_inputs(model: Any, part: PartSource) -> tuple[Any, ...]:
    """One small input per name: a 1x3xHxW image at the model's size, or one row of
    token ids that ends with the end-of-text token (CLIP pools there)."""
    import torch

    config = model.config
    examples: list[Any] = []
    for name in part.input_names:
        if name == "pixel_values":
            vision = getattr(config, "vision_config", config)
            side = int(getattr(vision, "image_size", 224))
            channels = int(getattr(vision, "num_channels", 3))
            generator = torch.Generator().manual_seed(0)
            examples.append(torch.rand(1, channels, side, side, generator=generator))
        elif name == "input_ids":
            text = getattr(config, "text_config", config)
            eos = getattr(text, "eos_token_id", None)
            vocab = int(getattr(text, "vocab_size", 100))
            last = eos if isinstance(eos, int) else vocab - 1
            ids = [min(5 + i, vocab - 1) for i in range(7)] + [last]
            examples.append(torch.tensor([ids], dtype=torch.long))
        elif name == "attention_mask":
            examples.append(torch.ones(1, 8, dtype=torch.long))
        else:
            raise UnsupportedError(f"part {part.name}: no example input for {name!r}")
    return tuple(examples)


def export_onnx(model: Any, parts: Sequence[PartSource], out: Path) -> list[str]:
    """Each part as `<name>_model.onnx` in `out`; returns the file names, in order."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    files = []
    for part in parts:
        file = f"{part.name}_model.onnx"
        axes = {name: _DYNAMIC_AXES.get(name, {0: "batch"}) for name in part.input_names}
        axes[part.output_name] = {0: "batch"}
        # The TorchScript exporter: the dynamo one needs onnxscript. Its deprecation
        # warning and the tracer's warnings would abort an export under `-W error`.
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _wrapper(model, part),
                example_inputs(model, part),
                str(out / file),
                input_names=list(part.input_names),
                output_names=[part.output_name],
                dynamic_axes=axes,
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
        files.append(file)
    return files


def export_openvino(model: Any, parts: Sequence[PartSource], out: Path) -> list[str]:
    """Each part as `openvino_<name>_model.xml/.bin` in `out`; returns the .xml names."""
    import openvino as ov
    import torch

    from edgeport.backends.openvino_ir import save_ir

    out.mkdir(parents=True, exist_ok=True)
    files = []
    for part in parts:
        file = f"openvino_{part.name}_model.xml"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            ir = ov.convert_model(_wrapper(model, part), example_input=example_inputs(model, part))
        # convert_model names ports after traced values ('32', '74'): name them.
        for port, name in zip(ir.inputs, part.input_names, strict=True):
            port.get_tensor().set_names({name})
        ir.outputs[0].get_tensor().set_names({part.output_name})
        save_ir(ir, out / file)
        files.append(file)
    return files
