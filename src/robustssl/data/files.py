"""Finding dataset files on disk, with errors that say where we looked and what layout was expected."""

from __future__ import annotations

import json
from pathlib import Path


class CorruptFileError(ValueError):
    """A dataset file exists but cannot be read (truncated, wrong format, unexpected contents)."""

    def __init__(self, path: Path | str, problem: str):
        self.path = Path(path)
        super().__init__(f"{self.path}: {problem}")


def resolve_root(dataset: str, root: str | Path | None, layout: str) -> Path:
    """``root`` as an absolute path (``~`` expanded); raise if it was not given or is not a directory."""
    if root is None:
        raise ValueError(f"dataset {dataset!r} reads local files: pass root=DIR (--root DIR). "
                         f"Expected layout: {layout}")
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"dataset {dataset!r}: root directory {path} does not exist. "
                                f"Expected layout: {layout}")
    return path


def find_file(dataset: str, candidates: list[Path], layout: str) -> Path:
    """The first existing path among ``candidates``; raise naming all of them when none exists."""
    for path in candidates:
        if path.is_file():
            return path
    looked = ", ".join(str(p) for p in candidates)
    raise FileNotFoundError(f"dataset {dataset!r}: missing file; looked for {looked}. "
                            f"Expected layout: {layout}")


def subdirs(path: Path) -> list[str]:
    """Sorted names of the visible sub-directories of ``path``."""
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def manifest_class_names(base: Path) -> list[str] | None:
    """Class names recorded in ``base/manifest.json`` by the corrupted-copy writer, if it recorded them.

    Folder layouts sort class folders by name, which only matches label order for names such as wnids; a
    recorded list restores the original label order of any dataset written in such a layout.
    """
    path = base / "manifest.json"
    if not path.is_file():
        return None
    try:
        names = json.loads(path.read_text()).get("class_names")
    except (ValueError, AttributeError) as exc:
        raise CorruptFileError(path, f"not a JSON object ({exc})") from exc
    if names is None:
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CorruptFileError(path, f"'class_names' must be a list of strings, got {names!r:.80}")
    return names


def positions_in(dirs: list[str], names: list[str], where: str,
                 what: str = "the given class names") -> list[int]:
    """The label of each class folder in ``dirs``: the position of its name in ``names`` (``what`` and
    ``where`` word the ValueError raised for folders not in it)."""
    position = {name: i for i, name in enumerate(names)}
    unknown = [d for d in dirs if d not in position]
    if unknown:
        raise ValueError(f"{where}: class folders {unknown[:5]} are not in {what} ({len(names)} names, "
                         f"e.g. {names[:3]})")
    return [position[d] for d in dirs]


def class_folders(folder: Path, class_names: list[str] | None) -> tuple[list[str], list[int]]:
    """Class sub-folders of ``folder`` and the label of each: the position in ``class_names`` when given,
    the number itself when every folder is an integer, else the sorted position."""
    dirs = subdirs(folder)
    if class_names is not None:
        return dirs, positions_in(dirs, class_names, str(folder))
    if dirs and all(d.isdigit() for d in dirs):
        dirs = sorted(dirs, key=int)
        return dirs, [int(d) for d in dirs]
    return dirs, list(range(len(dirs)))
