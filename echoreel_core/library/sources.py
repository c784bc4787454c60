"""A library folder's clips and captions, from any of the caption formats it may hold.

A library is a folder of videos (any depth; hidden folders are skipped) and their captions, given by
    - a JSON list of objects with a video and a caption: keys `video` (or `video_path`, `path`,
      `file`) and `caption` (or `text`, `name`, `title`), optionally `source` (clips that share a
      source are never paired with each other) and any other keys, kept as extras;
    - a CSV file with a header naming those columns;
    - the official EchoReel training JSON ({input_text, gt_video_path, inject_text,
      inject_video_path}, or reference_text / reference_video_path): both videos of every entry,
      each with its own caption;
    - a sidecar text file next to a video (`clip.mp4` and `clip.txt`), for videos that no JSON or
      CSV names.
Every top-level `.json` and `.csv` of the folder is read; one that is none of these formats is
reported and ignored. Paths are relative to the file that names them and must stay inside the
folder. A video named twice keeps its first caption (JSON and CSV files in name order, then
sidecars); a different caption for it is reported.

`scan(folder)` returns the clips (a relative path, a caption, a source, extras) and the problems
found, each counted by kind: "empty caption", "missing video", "outside the library", "not a
video", "bad caption file", "conflicting caption", "no caption".
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..video_io import VIDEO_EXTENSIONS

VIDEO_KEYS = ("video", "video_path", "path", "file", "filename")
CAPTION_KEYS = ("caption", "text", "name", "title")
OFFICIAL_PAIRS = (("gt_video_path", ("input_text",)),
                  ("inject_video_path", ("inject_text", "reference_text")),
                  ("reference_video_path", ("reference_text", "inject_text")))
INDEX_FILE = "echoreel_index.safetensors"


@dataclass(frozen=True)
class Clip:
    video: str  # path relative to the library folder, with / separators
    caption: str
    source: str = ""  # clips sharing a non-empty source are near-duplicates of each other
    extra: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Problem:
    kind: str
    where: str
    reason: str

    def message(self) -> str:
        return f"{self.where}: {self.reason}"


def _first(item: dict, keys) -> str | None:
    for key in keys:
        if key in item:
            return key
    return None


def _relative(folder: str, base: str, name: str) -> str | None:
    """`name` (relative to the folder `base`) as a path relative to `folder`, with / separators,
    or None when it leaves it. Plain strings: a library can name a hundred thousand videos."""
    path = os.path.normpath(os.path.join(base, name))
    if not path.startswith(folder + os.sep):
        return None
    rel = path[len(folder) + 1:]
    return rel.replace(os.sep, "/") if os.sep != "/" else rel


def is_video(name: str) -> bool:
    return name.lower().endswith(VIDEO_EXTENSIONS)


def _records(path: Path) -> list[dict] | str:
    """The objects a JSON or CSV caption file holds, or why it is not one."""
    try:
        if path.suffix.lower() == ".csv":
            with open(path, newline="", encoding="utf-8-sig") as f:
                return [dict(row) for row in csv.DictReader(f)]
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as error:
        return f"cannot read it ({str(error).splitlines()[0][:200]})"
    if not isinstance(data, list):
        return f"not a caption list (a JSON {type(data).__name__})"
    return data


def _clips_of(item, where: str) -> list[tuple[str, object, str, dict]] | Problem:
    """(video, caption, source, extra) of one record: one clip, or two for an official pair."""
    if not isinstance(item, dict):
        return Problem("bad caption file", where, f"an entry is a {type(item).__name__}, not an object")
    if "gt_video_path" in item:
        out = []
        for video_key, caption_keys in OFFICIAL_PAIRS:
            if video_key in item:
                key = _first(item, caption_keys)
                out.append((item[video_key], item.get(key) if key else None, "", {}))
        return out
    video_key, caption_key = _first(item, VIDEO_KEYS), _first(item, CAPTION_KEYS)
    if video_key is None or caption_key is None:
        return Problem("bad caption file", where, f"an entry lacks a video or caption key (it has {', '.join(map(str, item)) or 'none'}; "
                                                  f"video: {'/'.join(VIDEO_KEYS)}, caption: {'/'.join(CAPTION_KEYS)})")
    extra = {k: v for k, v in item.items() if k not in (video_key, caption_key, "source")}
    return [(item[video_key], item[caption_key], str(item.get("source") or ""), extra)]


def caption_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in (".json", ".csv")
                  and not p.name.startswith("."))


def video_files(folder: Path) -> list[str]:
    """Every video under `folder` (relative posix paths), hidden files and folders skipped."""
    out = []
    top = str(folder)
    for root, dirs, files in os.walk(top):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        prefix = "" if root == top else root[len(top) + 1:].replace(os.sep, "/") + "/"
        out += [prefix + name for name in sorted(files) if is_video(name) and not name.startswith(".")]
    return out


def scan(folder: str | Path) -> tuple[list[Clip], list[Problem]]:
    """The library's captioned clips, in a stable order, and the problems found."""
    folder = Path(folder).resolve()
    clips: dict[str, Clip] = {}
    named: set[str] = set()  # videos some caption file names, captioned or not
    problems: list[Problem] = []

    def add(video: str, caption, source: str, extra: dict, where: str) -> None:
        if not isinstance(caption, str) or not caption.strip():
            problems.append(Problem("empty caption", where, f"{video}: the caption is empty"))
            return
        caption = " ".join(caption.split())
        if video in clips:
            if clips[video].caption != caption:
                problems.append(Problem("conflicting caption", where,
                                        f"{video} is captioned again, differently; the first caption is kept"))
            return
        clips[video] = Clip(video, caption, source, extra)

    on_disk = set(video_files(folder))
    for path in caption_files(folder):
        records = _records(path)
        if isinstance(records, str):
            problems.append(Problem("bad caption file", path.name, records))
            continue
        for n, item in enumerate(records):
            where = f"{path.name} entry {n}"
            found = _clips_of(item, where)
            if isinstance(found, Problem):
                problems.append(found)
                if n == 0:
                    break  # a file whose first entry is not a clip is not a caption file
                continue
            for name, caption, source, extra in found:
                if not isinstance(name, str) or not name.strip():
                    problems.append(Problem("bad caption file", where, f"the video path is not a path ({name!r})"))
                    continue
                video = _relative(str(folder), str(path.parent), name.strip())
                if video is None:
                    problems.append(Problem("outside the library", where, f"{name} is outside the library folder"))
                elif not is_video(video):
                    problems.append(Problem("not a video", where, f"{name} is not a video file ({', '.join(VIDEO_EXTENSIONS)})"))
                elif video not in on_disk and not (folder / video).is_file():
                    problems.append(Problem("missing video", where, f"{name}: no such file"))
                else:
                    named.add(video)
                    add(video, caption, source, extra, where)
    for video in sorted(on_disk):
        if video in named:
            continue
        sidecar = (folder / video).with_suffix(".txt")
        if sidecar.is_file():
            try:
                text = sidecar.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as error:
                problems.append(Problem("empty caption", sidecar.name, f"cannot read it ({error})"))
                continue
            add(video, text, "", {}, PurePosixPath(video).with_suffix(".txt").as_posix())
        else:
            problems.append(Problem("no caption", video, "no caption file names it and it has no .txt sidecar"))
    return sorted(clips.values(), key=lambda c: c.video), problems
