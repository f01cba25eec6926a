"""Checkpoint files: written atomically, read without ever running code.

Writing: a temporary file, fsync, then rename, so a crash or a failed write at any point leaves the
previous checkpoint intact. Every file reproscope writes (checkpoints, NaN reproducers, probe
dumps) holds tensors and plain containers only (dicts, lists, tuples, str, int, float, bool, None):
configs go in as JSON text, RNG states as tensors and lists of ints. So every one of them loads with
``torch.load(weights_only=True)``.

Reading: ``load_file`` uses ``torch.load(weights_only=True)`` (torch's own allow-list, nothing
added) or ``safetensors`` for ``.safetensors`` files. A pickle that needs anything else is refused
with one line that says how to convert it; ``trust_pickle=True`` (the CLI's ``--trust-pickle``) is the
only way to unpickle it, and it prints a warning naming the file.

``--resume auto`` reads only checkpoints listed in the run folder's manifest (``checkpoints.json``:
file name -> step and sha256, written by reproscope beside each checkpoint); a file dropped into the
folder is never opened, and a listed file whose hash changed is skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import torch

from ..console import log as console
from .rundir import write_json

MANIFEST = "checkpoints.json"


class CheckpointError(RuntimeError):
    pass


class UnsafeCheckpointError(CheckpointError):
    """The file holds pickled Python objects that a weights-only load refuses."""


class _Sha256Writer:
    """A file wrapper that hashes what is written through it (so a checkpoint is never read back to hash it)."""

    def __init__(self, f):
        self.f, self.h = f, hashlib.sha256()

    def write(self, b) -> int:
        self.h.update(b)
        return self.f.write(b)

    def flush(self) -> None:
        self.f.flush()


def _atomic_write(path: Path, write) -> str:
    """``write(file)`` into a temporary file, fsync, rename over ``path``; the sha256 of what was written.

    Raises:
        CheckpointError: the write failed (full disk, I/O error); the previous file is untouched.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            hashed = _Sha256Writer(f)
            write(hashed)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        return hashed.h.hexdigest()
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise CheckpointError(f"could not write checkpoint {path}: {e.strerror or e}; "
                                  f"the previous checkpoint (if any) is untouched") from e
        raise


def atomic_save(obj: Any, path: str | os.PathLike) -> str:
    """``torch.save(obj, path)`` through a temporary file, fsync and rename; returns the file's sha256.

    Raises:
        CheckpointError: the write failed (full disk, I/O error); the previous file is untouched.
    """
    return _atomic_write(Path(path), lambda f: torch.save(obj, f))


def _fsync_dir(d: Path) -> None:
    dfd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_weights(state_dict: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write a model's weights as ``.safetensors`` (atomically; tied tensors are stored once each)."""
    from safetensors.torch import save
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    _atomic_write(Path(path), lambda f: f.write(save(tensors)))


def saved_recipe(obj: dict) -> dict:
    """The recipe dict a checkpoint or reproducer carries (JSON text; older files: a plain dict)."""
    if isinstance(obj.get("recipe_json"), str):
        return json.loads(obj["recipe_json"])
    if isinstance(obj.get("recipe"), dict):
        return obj["recipe"]
    raise KeyError("recipe_json")


# ----------------------------------------------------------------------------- reading


def load_file(path: str | os.PathLike, map_location="cpu", *, trust_pickle: bool = False,
              what: str = "checkpoint") -> Any:
    """The contents of a ``.pt``/``.pth``/``.bin`` file (weights-only unpickling) or a ``.safetensors``
    file (a flat ``{name: tensor}`` dict).

    Raises:
        CheckpointError: missing, corrupt or truncated file.
        UnsafeCheckpointError: the pickle needs globals beyond torch's weights-only allow-list
            (unless ``trust_pickle``, which unpickles it after a warning on stderr).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file as st_load
        try:
            return st_load(str(path), device=str(map_location))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{what} {path} is not a readable .safetensors file ({e})") from e
    with open(path, "rb") as f:
        head = f.read(4)
    if head and not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save: a zip archive; legacy: a pickle
        raise CheckpointError(f"{what} {path} is not a PyTorch file (it starts with {head!r}; torch.save writes a zip "
                              f"archive): give a file written by torch.save (.pt/.pth/.bin) or a .safetensors file")
    if trust_pickle:
        print(f"WARNING: --trust-pickle: unpickling {path} with full pickle; a malicious file can run "
              f"arbitrary code on this machine", file=sys.stderr, flush=True)
        loader = dict(weights_only=False)
    else:
        loader = dict(weights_only=True)
    try:
        return torch.load(path, map_location=map_location, **loader)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e).lower():
            convert = (f", or convert it once to weights: python -c \"import torch; from safetensors.torch import "
                       f"save_file; sd = torch.load('{path}', weights_only=False); save_file(sd.get('model', sd), "
                       f"'{path.with_suffix('.safetensors')}')\"" if what in ("checkpoint", "weights file") else "")
            raise UnsafeCheckpointError(
                f"{what} {path} holds pickled Python objects beyond tensors and plain containers "
                f"({_unsafe_reason(e)}); reproscope does not unpickle them because that can run code. If you "
                f"trust its source, pass --trust-pickle{convert}") from e
        raise CheckpointError(f"{what} {path} is corrupt or truncated (UnpicklingError: {e}); "
                              f"use an earlier checkpoint") from e
    except Exception as e:  # torch raises many types for a damaged zip/pickle
        raise CheckpointError(f"{what} {path} is corrupt or truncated ({type(e).__name__}: {e}); "
                              f"use an earlier checkpoint") from e


def _unsafe_reason(e: Exception) -> str:
    """The line of torch's message that names the refused global, e.g. 'unsupported GLOBAL posix.system'."""
    for line in str(e).splitlines():
        if "GLOBAL" in line or "global" in line.lower() and "unsupported" in line.lower():
            return line.strip().rstrip(".")
    return "not loadable with weights_only=True"


def load_checkpoint(path: str | os.PathLike, map_location="cpu", *, trust_pickle: bool = False) -> dict:
    """Load and sanity-check a reproscope checkpoint (weights-only; see ``load_file``).

    Raises:
        CheckpointError: missing, corrupt, truncated, or not a reproscope checkpoint (no model/step);
            ``UnsafeCheckpointError`` for a pickle that would need code to load.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        raise CheckpointError(f"{path} holds weights only (no optimizer, schedule or step), so a run cannot resume "
                              f"from it; start a run from these weights with: reproscope train --weights {path}")
    ckpt = load_file(path, map_location, trust_pickle=trust_pickle)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "step" not in ckpt:
        raise CheckpointError(f"checkpoint {path} is not a reproscope checkpoint (no model/step)")
    return ckpt


def read_state_dict(obj, path, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The model state dict inside a loaded file: the file itself when it is ``{name: tensor}``, else its
    ``model`` or ``state_dict`` entry (reproscope, timm and Lightning checkpoints). The one reader of
    foreign weight files (``load_weights`` and ``diagnose eval``'s ``read_checkpoint``).

    Raises:
        CheckpointError: no state dict of tensors inside (the message names ``path``).
    """
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{what} {path} holds no state dict of tensors (expected {{name: tensor}}, "
                              f"or a checkpoint with a 'model' or 'state_dict' entry)")
    return obj


def load_weights(path: str | os.PathLike, *, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """A model state dict from a ``.safetensors`` file, a plain state-dict ``.pt``, or a reproscope
    checkpoint (its ``model`` entry). A leading ``module.`` (DDP) or ``_orig_mod.`` (torch.compile)
    prefix on every key is removed.

    Raises:
        CheckpointError: unreadable file, or no tensor dict inside it.
    """
    obj = read_state_dict(load_file(path, trust_pickle=trust_pickle, what="weights file"), path, "weights file")
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


# ----------------------------------------------------------------------------- the run folder's manifest


def read_manifest(run_dir: str | os.PathLike) -> dict[str, dict]:
    """``{file name: {"step": int, "sha256": str}}`` from ``run_dir/checkpoints.json`` ({} if absent or unreadable)."""
    p = Path(run_dir) / MANIFEST
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict) and "sha256" in v and "step" in v} \
        if isinstance(data, dict) else {}


def write_manifest(run_dir: str | os.PathLike, entries: dict[str, dict]) -> None:
    write_json(Path(run_dir) / MANIFEST, entries)


def listed_checkpoints(run_dir: str | os.PathLike):
    """The manifest's checkpoints, highest step first (``best.pt`` last), each verified against its
    recorded sha256 only when the caller gets to it (a generator: resuming hashes one file, not all).
    Unlisted files are never opened; a missing or changed file is skipped (a changed one with a message)."""
    run_dir = Path(run_dir)
    entries = sorted(read_manifest(run_dir).items(),
                     key=lambda kv: (kv[0] != "best.pt", int(kv[1]["step"]), kv[0] == "last.pt"), reverse=True)
    for name, entry in entries:
        p = run_dir / name
        if not p.is_file() or "/" in name or name.startswith("."):
            continue
        if sha256_of(p) != entry["sha256"]:
            console.warning(f"resume auto: skipping {p}: its contents changed since reproscope wrote it (sha256 mismatch)")
            continue
        yield int(entry["step"]), p


def _atomic_link(target: Path, link: Path) -> None:
    """``link`` becomes another name for ``target`` (hard link, or a copy where links are not supported)."""
    import shutil
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(target, tmp)
    except OSError:
        shutil.copyfile(target, tmp)
    os.replace(tmp, link)


class CheckpointManager:
    """The checkpoint files of one run folder: ``ckpt-step<N>.pt`` written atomically, ``last.pt`` and
    ``best.pt`` as other names for the same bytes, the last ``keep_last`` kept, and the manifest
    (name -> step, sha256) that ``resume auto`` trusts.

    ``save`` is called on every rank: rank 0 (``is_main``) writes and the caller's barrier makes the
    others wait; the state is built only where it is written (``state()`` is called by rank 0 alone).
    """

    def __init__(self, run_dir: Path, keep_last: int, is_main: bool = True):
        self.run_dir, self.keep_last, self.is_main = Path(run_dir), keep_last, is_main

    @property
    def last(self) -> Path:
        return self.run_dir / "last.pt"

    def save(self, state, step: int, best: bool) -> Path:
        """Write ``state()`` (a callable, so other ranks never build it) as the checkpoint of optimizer step
        ``step``; ``best``: it is also ``best.pt``. Returns the path written (on every rank)."""
        path = self.run_dir / f"ckpt-step{step:08d}.pt"
        if not self.is_main:
            return path
        entry = {"step": step, "sha256": atomic_save(state(), path)}
        manifest = read_manifest(self.run_dir)
        manifest[path.name] = manifest["last.pt"] = entry
        _atomic_link(path, self.last)
        if best:  # the same bytes: another name for this checkpoint, not a second write
            _atomic_link(path, self.run_dir / "best.pt")
            manifest["best.pt"] = entry
        for old in sorted(self.run_dir.glob("ckpt-step*.pt"))[:-self.keep_last]:
            old.unlink(missing_ok=True)
            manifest.pop(old.name, None)
        write_manifest(self.run_dir, manifest)
        return path
