"""Small validators shared by the run configs; messages use `{p}` for the config's dotted path."""

from __future__ import annotations

import math
from pathlib import Path

from xtalign.config import require
from xtalign.distill.models.zoo import suggest_models, zoo_name

__all__ = ["check_model", "check_resources", "positive", "positive_int", "require"]


def positive_int(name: str, value: int) -> None:
    require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
            f"{{p}}{name} must be an integer >= 1; got {value!r}")


def positive(name: str, value: float) -> None:
    require(isinstance(value, int | float) and math.isfinite(value) and value > 0,
            f"{{p}}{name} must be a finite number > 0; got {value!r}")


def check_resources(num_gpus: float, num_cpus: float, resources: dict[str, float] | None) -> None:
    require(num_gpus >= 0, f"{{p}}num_gpus must be >= 0; got {num_gpus}")
    require(num_cpus >= 0, f"{{p}}num_cpus must be >= 0; got {num_cpus}")
    for name, amount in (resources or {}).items():
        require(isinstance(amount, int | float) and amount > 0, f"{{p}}resources.{name} must be a number > 0; "
                f"got {amount!r}")


def _known_model(model: str) -> bool:
    """A zoo name, an existing path, a `.gguf` name or a hub id (`org/name`): worth trying to load."""
    if zoo_name(model) is not None or model.endswith(".gguf"):
        return True
    path = Path(model).expanduser()
    return path.exists() or ("/" in model and not model.startswith((".", "/", "~")))


def check_loss_slice(value: int | None) -> None:
    require(value is None or value >= 0, f"{{p}}loss_slice={value} must be >= 0 (0: never slice; null: auto)")


def check_model(model: str, tokenizer: str | None, has_arch: bool) -> None:
    """The model spec first (an unknown name says so), then what only applies to `random`."""
    require(bool(model), "{p}model is empty; give a zoo model (`xtalign models`), a .gguf, a folder, a hub id "
            "or 'random'")
    if model == "random":
        require(has_arch and tokenizer is not None, "{p}model=random needs {p}arch and {p}tokenizer")
        return
    require(_known_model(model), f"{{p}}model={model!r} is not a zoo model (closest: "
            f"{', '.join(suggest_models(model))}), an existing file or folder, a .gguf or a hub id (org/name)")
    require(not has_arch, f"{{p}}arch only applies to {{p}}model=random (got model={model!r}); drop it "
            "({p}arch=null)")
