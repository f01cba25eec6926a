"""Model specs: how a command names a model, registered here or the user's own.

``NAME`` (registered: ``reproscope models``), ``package.module:factory``, ``path/to/file.py:factory``
(a single file, no install) or ``timm:NAME``, each optionally followed by constructor arguments:
``:KEY=VALUE,KEY=VALUE`` (one syntax for ``--model``, ``align``'s MINE/REF, ``zoo --model``,
``diagnose --model`` and ``watch(model_spec=)``), e.g.
``timm:vit_tiny_patch16_224:global_pool=avg,class_token=False`` or ``file.py:make:depth=4,dyt=true``.
Values are Python literals (``ast.literal_eval``: ``4``, ``1e-6``, ``(32, 32)``, ``'avg'``), with
``true``/``false``/``none`` in any case, and any other text taken as a string (``avg``); commas
inside brackets or quotes do not split. A key given twice: the last one wins.

The factory gets ``num_classes``, ``img_size`` and ``in_chans`` when it accepts them; a spec
argument of the same name overrides the one the command would pass.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError, nearest
from .registry import list_models, model_info

# ----------------------------------------------------------------------------- spec arguments

_ARGS_START = re.compile(r":\s*[A-Za-z_]\w*\s*=")  # ":KEY=": where the arguments begin (factories never hold '=')
_WORDS = {"true": True, "false": False, "none": None}


@dataclass(frozen=True)
class Spec:
    """A parsed spec: ``target`` (``NAME``, ``timm:NAME``, ``module:factory``, ``file.py:factory``),
    its constructor arguments ``kwargs`` and their text ``args`` (as written, "" when none)."""

    text: str
    target: str
    args: str = ""
    kwargs: dict = field(default_factory=dict)


def split_spec(spec: str) -> tuple[str, str]:
    """(target, argument text) of ``spec``: the arguments start at the first ``:KEY=``."""
    m = _ARGS_START.search(spec)
    return (spec, "") if m is None else (spec[:m.start()], spec[m.start() + 1:])


def _top_level_split(text: str) -> list[str]:
    """``text`` split at the commas outside brackets and quotes."""
    parts, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth <= 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return parts


def literal(value: str):
    """A spec value: a Python literal, ``true``/``false``/``none`` in any case, else the text itself."""
    v = value.strip()
    if v.lower() in _WORDS:
        return _WORDS[v.lower()]
    try:
        return ast.literal_eval(v)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return v


def parse_args(text: str, spec: str = "", flag: str = "--model") -> dict:
    """``KEY=VALUE,KEY=VALUE`` -> {key: literal(value)} (the last of a repeated key wins).

    Raises:
        ConfigError: a part that is not ``KEY=VALUE`` with KEY an identifier (one line naming the spec).
    """
    out: dict = {}
    for part in _top_level_split(text):
        if not part.strip():
            continue
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or not key.isidentifier():
            raise ConfigError(f"{flag} {spec or text!r}: argument {part.strip()!r} is not KEY=VALUE "
                              f"(e.g. global_pool=avg; separate arguments with commas)")
        out[key] = literal(value)
    return out


def parse_spec(spec: str, flag: str = "--model") -> Spec:
    """``spec`` split into its target and constructor arguments (see the module docstring).

    Raises:
        ConfigError: an argument that is not ``KEY=VALUE`` (also one written after the factory or a
            registered name without ``=``: ``file.py:make:depth``, ``vit_tiny:avg``).
    """
    target, args = split_spec(spec)
    body = re.sub(r"^[A-Za-z]:[\\/]", "", target)  # a Windows drive is not a separator
    head, _, rest = body.partition(":")
    stray = rest.partition(":")[2] if head == "timm" or head.endswith(".py") or "." in head else ""
    if not stray and rest and head in list_models():
        stray = rest
    if stray:
        parse_args(stray, spec, flag)  # raises: it has no '='
    return Spec(spec, target, args, parse_args(args, spec, flag) if args else {})


def with_args(spec: str, extra: list[str] | tuple[str, ...], flag: str = "--model") -> str:
    """``spec`` with the ``KEY=VALUE`` strings of ``extra`` appended to its arguments (``align
    --ref-arg``/``--mine-arg``); they come last, so they win over the same key in ``spec``."""
    extra = [e.strip() for e in extra if e.strip()]
    for e in extra:
        parse_args(e, e, flag)  # each must be KEY=VALUE on its own
    if not extra:
        return spec
    _, args = split_spec(spec)
    return spec + ("," if args.strip() else ("" if spec.endswith(":") else ":")) + ",".join(extra)


def _display_name(target: str, factory) -> str:
    if target.startswith("timm:"):
        return target.split(":", 1)[1]
    return getattr(factory, "__name__", None) or target.rsplit(":", 1)[-1]


def _signature(factory):
    try:
        return inspect.signature(factory)
    except (TypeError, ValueError):
        return None


def _keyword_candidates(target: str, factory) -> set[str]:
    """Names a factory's arguments could be meant as, for "did you mean": its own keywords, and where it
    forwards ``**kwargs`` (timm, our registered models) the keywords of the callables beside it in its
    module (timm: the model's module, e.g. VisionTransformer's ``global_pool``, ``class_token``)."""
    names: set[str] = set()

    def add(fn):
        sig = _signature(fn)
        if sig is not None:
            names.update(p.name for p in sig.parameters.values()
                         if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self")
    add(factory)
    sig = _signature(factory)
    if sig is not None and not any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
        return names
    module = None
    if target.startswith("timm:"):
        try:
            import timm
            module = inspect.getmodule(timm.models.model_entrypoint(target.split(":", 1)[1]))
        except Exception:
            module = None
    else:
        module = inspect.getmodule(factory)
    for obj in vars(module).values() if module is not None else ():
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and getattr(obj, "__module__", None) == module.__name__:
            add(obj)
    return names


def check_args(spec: str, factory, kwargs: dict | None = None, flag: str = "--model") -> None:
    """Each spec argument must be a keyword ``factory`` declares, unless it takes ``**kwargs`` (then the
    call decides, and ``user_model`` names the argument it refused).

    Raises:
        ConfigError: "--model 'x.py:make:depht=4': make() takes no argument 'depht' (did you mean 'depth'?)".
    """
    parsed = parse_spec(spec, flag)
    kwargs = parsed.kwargs if kwargs is None else kwargs
    sig = _signature(factory)
    if sig is None or not kwargs:
        return
    params = sig.parameters.values()
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return
    declared = {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    for key in kwargs:
        if key not in declared:
            raise ConfigError(_bad_arg(spec, parsed.target, factory, key, flag))


def _bad_arg(spec: str, target: str, factory, key: str, flag: str = "--model") -> str:
    return (f"{flag} {spec!r}: {_display_name(target, factory)}() takes no argument {key!r}"
            f"{nearest(key, _keyword_candidates(target, factory))}")


# ----------------------------------------------------------------------------- loading

def load_factory(spec: str):
    """The model factory named by ``spec`` (its constructor arguments are checked against the
    factory's signature here, and passed by ``user_model``):

    - ``package.module:factory`` (an installed or importable module),
    - ``path/to/file.py:factory`` (a single file, no install; imported under a private name),
    - ``timm:NAME`` (``timm.create_model(NAME, ...)``, never with pretrained weights),
    - ``NAME``, a model registered here (``reproscope models``),

    each optionally followed by ``:KEY=VALUE,...``.

    Raises:
        ConfigError: one line naming the spec and what is wrong (missing file, syntax error with its
            line, no such module or factory, timm not installed or no such timm model, an argument
            the factory does not declare).
    """
    factory = _load_target(spec, parse_spec(spec).target)
    check_args(spec, factory)
    return factory


def _load_target(spec: str, target: str):
    if ":" not in target:
        if target in list_models():
            return model_info(target).fn
        raise ConfigError(f"--model {spec!r}: expected a registered model name{nearest(target, list_models())}, "
                          f"package.module:factory, path/to/file.py:factory or timm:NAME (each optionally "
                          f"followed by :KEY=VALUE,...)")
    mod, fn = target.rsplit(":", 1)
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
    parsed = parse_spec(spec)
    factory = factory or load_factory(spec)
    given = parsed.kwargs  # the spec's own arguments: always passed, and they win over ours
    wanted = {"num_classes": num_classes, "img_size": img_size, "in_chans": in_chans}
    wanted = {k: v for k, v in wanted.items() if v is not None and k not in given}
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
                model = factory(**dict(kw), **given)
                break
            except TypeError as e:
                # a factory that forwards **kwargs refused one of the spec's own arguments: name it
                refused = [k for k in given if f"'{k}'" in str(e) and k not in dict(kw)]
                if refused:
                    raise ConfigError(_bad_arg(spec, parsed.target, factory, refused[0])) from e
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
    (``"copy": "model_src/FILE.py:factory[:ARGS]"``, relative to ``run_dir``) when it is there, else the spec."""
    copy = source.get("copy")
    if copy:
        file = spec_file(copy)
        if file is not None and (run_dir / file).is_file():
            return respec(copy, run_dir / file)
    return source["spec"]


def spec_file(spec: str) -> Path | None:
    """The source file a ``path/to/file.py:factory[:ARGS]`` spec names (None for module and timm specs)."""
    mod = split_spec(spec)[0].rsplit(":", 1)[0]
    return Path(mod) if mod.endswith(".py") else None


def respec(spec: str, file) -> str:
    """``spec`` (``file.py:factory[:ARGS]``) with its file replaced by ``file``, factory and arguments kept."""
    target, args = split_spec(spec)
    return f"{file}:{target.rsplit(':', 1)[1]}" + (f":{args}" if args else "")


def model_source(spec: str) -> dict:
    """What a run records about a user's model: the spec, and for a file spec its path and sha256."""
    import hashlib
    f = spec_file(spec)
    out: dict = {"spec": spec}
    if f is not None and f.is_file():
        out.update(file=str(f), sha256=hashlib.sha256(f.read_bytes()).hexdigest())
    return out
