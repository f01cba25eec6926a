"""Model specs: how a command names a model that is not registered here (the user's own).

``package.module:factory``, ``path/to/file.py:factory`` (a single file, no install) or ``timm:NAME``.
The factory gets ``num_classes``, ``img_size`` and ``in_chans`` when it accepts them.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

from ..config import ConfigError, nearest
from .registry import list_models, model_info


def load_factory(spec: str):
    """The model factory named by ``spec``:

    - ``package.module:factory`` (an installed or importable module),
    - ``path/to/file.py:factory`` (a single file, no install; imported under a private name),
    - ``timm:NAME`` (``timm.create_model(NAME, ...)``, never with pretrained weights),
    - ``NAME``, a model registered here (``reproscope models``).

    Raises:
        ConfigError: one line naming the spec and what is wrong (missing file, syntax error with its
            line, no such module or factory, timm not installed or no such timm model).
    """
    if ":" not in spec:
        if spec in list_models():
            return model_info(spec).fn
        raise ConfigError(f"--model {spec!r}: expected a registered model name{nearest(spec, list_models())}, "
                          f"package.module:factory, path/to/file.py:factory or timm:NAME")
    mod, fn = spec.rsplit(":", 1)
    if mod == "timm":
        try:
            import timm
        except ImportError as e:
            raise ConfigError(f"--model {spec!r}: timm is not installed (pip install timm)") from e
        if fn not in timm.list_models():
            raise ConfigError(f"--model {spec!r}: timm has no model {fn!r}{nearest(fn, timm.list_models())}")
        return lambda **kw: timm.create_model(fn, pretrained=False, **kw)
    if mod.endswith(".py"):
        module = _import_file(spec, Path(mod))
    else:
        try:
            module = importlib.import_module(mod)
        except ImportError as e:
            raise ConfigError(f"--model {spec!r}: cannot import {mod!r} ({e})") from e
    factory = getattr(module, fn, None)
    if not callable(factory):
        names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise ConfigError(f"--model {spec!r}: {mod} has no callable {fn!r}{nearest(fn, names)}")
    return factory


def _import_file(spec: str, path: Path):
    import importlib.util
    import sys
    if not path.is_file():
        raise ConfigError(f"--model {spec!r}: file {path} does not exist")
    name = f"reproscope_user_{abs(hash(str(path.resolve())))}"
    try:
        loader_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module
        loader_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"--model {spec!r}: syntax error in {path} line {e.lineno}: {e.msg}") from e
    except Exception as e:
        raise ConfigError(f"--model {spec!r}: importing {path} raised {type(e).__name__}: {e}") from e
    return module


def _accepted(factory, names: tuple[str, ...]) -> tuple[set[str], bool]:
    """The keyword names among ``names`` that ``factory`` declares, and whether it takes **kwargs."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return set(), True
    declared = {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    return declared & set(names), any(p.kind == p.VAR_KEYWORD for p in params)


def user_model(spec: str, num_classes: int, img_size: int | None = None, in_chans: int = 3, *, factory=None):
    """A ``make_model()`` for ``spec`` that passes ``num_classes``, ``img_size`` and ``in_chans`` when
    the factory accepts them (declared, or through ``**kwargs`` when the callee takes them).
    ``factory``: the already loaded factory of ``spec`` (a file spec is then not executed again).

    Raises (when called):
        ConfigError: the factory raised, or returned something that is not an ``nn.Module``.
    """
    import torch.nn as nn
    factory = factory or load_factory(spec)
    wanted = {"num_classes": num_classes, "img_size": img_size, "in_chans": in_chans}
    wanted = {k: v for k, v in wanted.items() if v is not None}
    declared, var_kw = _accepted(factory, tuple(wanted))
    # with **kwargs we cannot know which names the callee takes: try the fullest set first
    tries = [{k: v for k, v in wanted.items() if k in declared or var_kw}]
    if var_kw:
        tries += [{k: v for k, v in tries[0].items() if k in declared or k == "num_classes"},
                  {k: v for k, v in wanted.items() if k in declared}]

    def make_model():
        err = None
        for kw in dict.fromkeys(tuple(sorted(t.items())) for t in tries):
            try:
                model = factory(**dict(kw))
                break
            except TypeError as e:
                if "unexpected keyword" not in str(e) and "got an unexpected" not in str(e):
                    raise ConfigError(f"--model {spec!r}: the factory raised TypeError: {e}") from e
                err = e
            except Exception as e:
                raise ConfigError(f"--model {spec!r}: the factory raised {type(e).__name__}: {e}") from e
        else:
            raise ConfigError(f"--model {spec!r}: the factory refused every argument set ({err})")
        if not isinstance(model, nn.Module):
            raise ConfigError(f"--model {spec!r}: the factory returned {type(model).__name__}, not an nn.Module")
        return model
    return make_model



def factory_for(spec: str, img_size: int | None = None, in_chans: int = 3):
    """``factory(num_classes) -> nn.Module`` for ``spec`` (what the Trainer's ``model_factory`` takes).
    The spec is loaded here, once: a bad spec fails before any data is built."""
    loaded = load_factory(spec)

    def factory(num_classes: int):
        return user_model(spec, num_classes, img_size=img_size, in_chans=in_chans, factory=loaded)()
    return factory


def spec_in_run(source: dict, run_dir: Path) -> str:
    """The spec to rebuild a run's model from its ``model_source.json`` record: the copy the run keeps
    (``"copy": "model_src/FILE.py:factory"``, relative to ``run_dir``) when it is there, else the spec."""
    copy = source.get("copy")
    if copy:
        file, fn = copy.rsplit(":", 1)
        if (run_dir / file).is_file():
            return f"{run_dir / file}:{fn}"
    return source["spec"]


def spec_file(spec: str) -> Path | None:
    """The source file a ``path/to/file.py:factory`` spec names (None for module and timm specs)."""
    mod = spec.rsplit(":", 1)[0]
    return Path(mod) if mod.endswith(".py") else None


def model_source(spec: str) -> dict:
    """What a run records about a user's model: the spec, and for a file spec its path and sha256."""
    import hashlib
    f = spec_file(spec)
    out: dict = {"spec": spec}
    if f is not None and f.is_file():
        out.update(file=str(f), sha256=hashlib.sha256(f.read_bytes()).hexdigest())
    return out
