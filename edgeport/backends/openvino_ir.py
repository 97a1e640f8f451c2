"""Writing OpenVINO IR that does not depend on what the process did before.

OpenVINO names a node that was never given a name `<Type>_<n>`, with `n` from a counter
that runs across the whole process. An IR saved by a conversion that converted something
else first (the second pair of a build, a Ray worker, a shard) would then differ from the
same IR saved by a fresh process, and bundles that should be identical would not be. So
every such name is replaced by `<Type>_<k>`, `k` the node's place in the graph's order,
before saving: the same graph always gets the same names.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any


def stable_names(model: Any) -> None:
    """Rename, in place, the nodes that carry OpenVINO's generated names, and the tensor
    names copied from them (an output without a name is given its Result's)."""
    renamed: dict[str, str] = {}
    ops = list(model.get_ordered_ops())
    for index, op in enumerate(ops):
        kind, name = op.get_type_name(), op.get_friendly_name()
        if re.fullmatch(rf"{re.escape(kind)}_\d+", name):
            renamed[name] = f"{kind}_{index}"
            op.set_friendly_name(renamed[name])
    for op in ops:
        for output in op.outputs():
            names = output.get_tensor().get_names()
            if names & renamed.keys():
                output.get_tensor().set_names({renamed.get(n, n) for n in names})


def save_ir(model: Any, path: Path, *, compress_to_fp16: bool = False) -> None:
    """ov.save_model, with generated node names made stable first (see the module)."""
    import openvino as ov

    stable_names(model)
    ov.save_model(model, str(path), compress_to_fp16=compress_to_fp16)
