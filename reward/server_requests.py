"""Reading and checking one ``POST /score`` request of the reward server (protocol v1, docs/reward_server.md).

Everything a request can get wrong is found here, before any of its videos is queued: the form itself (content
type, body size), the ``request`` JSON (types, missing or unknown keys, the video kind), the limits (items,
prompt length, part size, frame count and size), the file parts (each referenced part present and used once,
none left over) and paths (under a root after symlinks are resolved, then existing). A problem raises
:class:`RequestRejected` with the HTTP status and the field it concerns, e.g. ``items[2].video.fps``. Only
decoding is left to the model, where a video that cannot be read is a per-item failure, as in a local score.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Union

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.types import Message, Receive

from .video import VideoFrames, VideoSource


class RequestRejected(Exception):
    """A request the server refuses: the HTTP status, the field at fault and how to fix it (never a model error)."""

    def __init__(self, status: int, field: str, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {field}: {message}")
        self.status, self.field, self.message, self.headers = status, field, message, headers or {}


@dataclass(frozen=True)
class RequestLimits:
    """What one request may hold; /info reports these to clients."""

    max_items: int
    max_video_bytes: int
    max_frames: int
    max_pixels: int
    max_prompt_chars: int

    def request_json_bytes(self) -> int:
        """Upper bound on the ``request`` field's size: every prompt at its limit, each character written as a
        12-byte JSON escape (a surrogate pair), plus room for the rest of each item."""
        return self.max_items * (12 * self.max_prompt_chars + 4096) + 4096

    def body_bytes(self) -> int:
        """Upper bound on a whole request body: every item a video part at its limit, the JSON, and headroom for
        the multipart headers."""
        return self.max_items * self.max_video_bytes + self.request_json_bytes() + 2**20


@dataclass(frozen=True)
class PathVideo:
    path: str


@dataclass(frozen=True)
class FileVideo:
    part: str


@dataclass(frozen=True)
class FramesVideo:
    part: str
    fps: float


VideoRef = Union[PathVideo, FileVideo, FramesVideo]


@dataclass(frozen=True)
class ItemRequest:
    """One item of the ``request`` JSON, checked: its prompt and where its video comes from."""

    prompt: str
    video: VideoRef
    field: str  # "items[i]", the prefix of every error about this item


@dataclass(frozen=True)
class QueuedItem:
    """An item ready for the model: the source ``load_video`` reads (a path or in-memory frames), the prompt,
    and the upload's temporary file, removed once the request is answered."""

    video: VideoSource
    prompt: str
    field: str
    upload: Path | None = None


_VIDEO_KEYS = {"path": {"kind", "path"}, "file": {"kind", "part"}, "frames": {"kind", "part", "fps"}}


def parse_items(text: str, limits: RequestLimits) -> list[ItemRequest]:
    """The items of the ``request`` form field, every type, key and limit checked (none of the parts yet)."""
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as error:
        raise RequestRejected(400, "request", f"is not valid JSON ({error})") from error
    if not isinstance(payload, dict) or set(payload) != {"items"}:
        got = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise RequestRejected(400, "request", f'must be a JSON object with exactly one key "items", got {got}')
    items = payload["items"]
    if not isinstance(items, list) or not items:
        raise RequestRejected(400, "items", "must be a non-empty list of {\"prompt\": ..., \"video\": ...} objects")
    if len(items) > limits.max_items:
        raise RequestRejected(413, "items", f"{len(items)} items exceed this server's max_items = {limits.max_items}; "
                                            "split them over several requests")
    return [_parse_item(item, f"items[{index}]", limits) for index, item in enumerate(items)]


def _parse_item(item: Any, field: str, limits: RequestLimits) -> ItemRequest:
    _require_keys(item, {"prompt", "video"}, field)
    prompt = item["prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise RequestRejected(400, f"{field}.prompt", f"must be a non-empty string, got {prompt!r}")
    if len(prompt) > limits.max_prompt_chars:
        raise RequestRejected(413, f"{field}.prompt", f"has {len(prompt)} characters, above this server's "
                                                      f"max_prompt_chars = {limits.max_prompt_chars}")
    return ItemRequest(prompt=prompt, video=_parse_video(item["video"], f"{field}.video"), field=field)


def _parse_video(video: Any, field: str) -> VideoRef:
    if not isinstance(video, dict):
        raise RequestRejected(400, field, f"must be an object with a kind, got {type(video).__name__}")
    kind = video.get("kind")
    if kind not in _VIDEO_KEYS:
        raise RequestRejected(400, f"{field}.kind", f"must be one of {sorted(_VIDEO_KEYS)}, got {kind!r}")
    _require_keys(video, _VIDEO_KEYS[kind], field)
    if kind == "path":
        return PathVideo(_string(video, "path", field))
    part = _string(video, "part", field)
    if kind == "file":
        return FileVideo(part)
    fps = video["fps"]
    if isinstance(fps, bool) or not isinstance(fps, (int, float)):
        raise RequestRejected(400, f"{field}.fps", f"must be a number, got {fps!r}")
    if not (math.isfinite(fps) and fps > 0):
        raise RequestRejected(422, f"{field}.fps", f"must be a finite number > 0, got {fps!r}")
    return FramesVideo(part, float(fps))


def _require_keys(value: Any, keys: set[str], field: str) -> None:
    if not isinstance(value, dict):
        raise RequestRejected(400, field, f"must be an object with keys {sorted(keys)}, got {type(value).__name__}")
    missing, unknown = sorted(keys - set(value)), sorted(set(value) - keys)
    if missing:
        raise RequestRejected(400, f"{field}.{missing[0]}", f"is missing (an object here needs {sorted(keys)})")
    if unknown:
        raise RequestRejected(400, f"{field}.{unknown[0]}", f"is not a known key (an object here takes {sorted(keys)})")


def _string(value: dict[str, Any], key: str, field: str) -> str:
    if not isinstance(value[key], str) or not value[key]:
        raise RequestRejected(400, f"{field}.{key}", f"must be a non-empty string, got {value[key]!r}")
    return value[key]


def check_parts(items: list[ItemRequest], parts: set[str]) -> None:
    """Every part an item names was sent, none is named twice, and none was sent without being named."""
    used: dict[str, str] = {}
    for item in items:
        if isinstance(item.video, PathVideo):
            continue
        field, part = f"{item.field}.video.part", item.video.part
        if part not in parts:
            raise RequestRejected(400, field, f"names the file part {part!r}, which the request does not hold")
        if part in used:
            raise RequestRejected(400, field, f"names the file part {part!r}, already used by {used[part]}; "
                                              "send one part per item")
        used[part] = item.field
    unused = sorted(parts - set(used))
    if unused:
        raise RequestRejected(400, f"parts.{unused[0]}", "is a file part no item names; remove it or reference it "
                                                         'with {"kind": "file" | "frames", "part": ...}')


def resolve_path(path: str, roots: tuple[Path, ...], *, field: str) -> Path:
    """The file a path request names, once symlinks are resolved, if it lies under one of the server's roots.

    Escapes are refused (403) before existence is checked (404), so a client learns nothing about files
    outside the roots.
    """
    if not roots:
        raise RequestRejected(403, field, "this server reads no paths (started without --roots); upload the file "
                                          'instead ({"kind": "file"})')
    if not Path(path).is_absolute() or "\0" in path:
        raise RequestRejected(400, field, f"must be an absolute path, got {path!r}")
    resolved = Path(path).resolve()
    if not any(resolved.is_relative_to(root) for root in roots):
        raise RequestRejected(403, field, f"{path} resolves to {resolved}, outside this server's roots")
    if not resolved.is_file():
        raise RequestRejected(404, field, f"{path} does not exist or is not a file")
    return resolved


def check_part_size(size: int, limits: RequestLimits, *, field: str) -> None:
    if size > limits.max_video_bytes:
        raise RequestRejected(413, field, f"the part holds {size:,} bytes, above this server's "
                                          f"max_video_bytes = {limits.max_video_bytes:,}")


_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def frames_from_npy(data: bytes, fps: float, *, limits: RequestLimits, field: str) -> VideoFrames:
    """Raw frames from a ``.npy`` part: uint8 ``(T, H, W, 3)``, within ``max_frames`` and ``max_pixels``.

    The header is checked before the array is read, and never with pickle.
    """
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version not in _HEADER_READERS:  # version 3 only adds UTF-8 names of structured fields
            raise ValueError(f".npy format version {version} is not supported; write version 1.0 or 2.0")
        shape, _, dtype = _HEADER_READERS[version](stream)
    except (ValueError, SyntaxError, TypeError) as error:
        raise RequestRejected(400, field, f"the part is not a NumPy .npy file ({error})") from error
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
        raise RequestRejected(422, field, f"frames must be uint8 (T, H, W, 3), got {dtype} {tuple(shape)}")
    frames, height, width, _ = shape
    if frames > limits.max_frames:
        raise RequestRejected(413, field, f"{frames} frames exceed this server's max_frames = {limits.max_frames}")
    if height * width > limits.max_pixels:
        raise RequestRejected(413, field, f"frames of {width}x{height} = {height * width:,} px exceed this server's "
                                          f"max_pixels = {limits.max_pixels:,}")
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as error:  # e.g. fewer bytes than the header promises
        raise RequestRejected(400, field, f"the part is not a complete .npy array ({error})") from error
    return VideoFrames(frames=array, fps=fps, name=field)


def save_upload(source: BinaryIO, folder: Path, *, filename: str | None) -> Path:
    """Copy an uploaded video into a temporary file (the video contract reads paths), keeping a plain suffix of
    the client's file name as a hint to the demuxer. The caller removes the file."""
    suffix = Path(filename or "").suffix
    suffix = suffix if suffix[1:].isalnum() and len(suffix) <= 8 else ""
    source.seek(0)
    with tempfile.NamedTemporaryFile(dir=folder, suffix=suffix, delete=False) as handle:
        shutil.copyfileobj(source, handle)
    return Path(handle.name)


# A request without file parts may also come url-encoded: what httpx sends for `data=` without `files=`.
_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


async def read_form(request: Request, limits: RequestLimits) -> FormData:
    """The form (multipart, or url-encoded when it carries no files), refused (413) as soon as the body grows
    past what the limits allow."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith(_FORM_TYPES):
        raise RequestRejected(400, "content-type", f"must be multipart/form-data, got {content_type or 'none'!r}")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.body_bytes():
        raise RequestRejected(413, "body", f"{int(declared):,} bytes exceed the {limits.body_bytes():,} this server's "
                                           "limits allow (max_items x max_video_bytes + the request JSON)")
    capped = Request(request.scope, _capped_receive(request.receive, limits.body_bytes()))
    try:
        return await capped.form(max_files=limits.max_items, max_fields=limits.max_items + 1,
                                 max_part_size=limits.request_json_bytes())
    except HTTPException as error:  # how Starlette reports a malformed multipart body
        raise RequestRejected(400, "body", f"is not a valid multipart body: {error.detail}") from error
    except ClientDisconnect as error:  # answered to nobody; counted with the 400s
        raise RequestRejected(400, "body", "the client disconnected before sending the whole body") from error


def _capped_receive(receive: Receive, max_bytes: int) -> Receive:
    received = 0

    async def capped() -> Message:
        nonlocal received
        message = await receive()
        received += len(message.get("body", b""))
        if received > max_bytes:
            raise RequestRejected(413, "body", f"exceeds the {max_bytes:,} bytes this server's limits allow")
        return message

    return capped


async def queued_items(
    form: FormData, limits: RequestLimits, *, roots: tuple[Path, ...], upload_dir: Path, uploads: list[Path]
) -> list[QueuedItem]:
    """The request's items with their videos ready for the model: paths resolved, frames read, uploads saved to
    ``upload_dir`` (and appended to ``uploads``, which the caller removes once the request is answered)."""
    texts = [value for key, value in form.multi_items() if key == "request"]
    if len(texts) != 1:
        raise RequestRejected(400, "request", f"the form must hold one field `request` (the JSON), got {len(texts)}")
    text = texts[0]
    if isinstance(text, UploadFile):  # sent as a file part: accepted, within the size a plain field may have
        if (text.size or 0) > limits.request_json_bytes():
            raise RequestRejected(413, "request", f"holds {text.size:,} bytes, above the "
                                                  f"{limits.request_json_bytes():,} this server's limits allow")
        text = (await text.read()).decode("utf-8", errors="replace")
    items = parse_items(text, limits)
    parts: dict[str, UploadFile] = {}
    for key, value in form.multi_items():
        if key == "request":
            continue
        if not isinstance(value, UploadFile):
            raise RequestRejected(400, key, "is not a known form field; video parts must be files (with a filename)")
        if key in parts:
            raise RequestRejected(400, f"parts.{key}", "is sent twice; give every part its own name")
        parts[key] = value
    check_parts(items, set(parts))
    queued = []
    for item in items:
        field_name = f"{item.field}.video"
        video = item.video
        if isinstance(video, PathVideo):
            path = resolve_path(video.path, roots, field=f"{field_name}.path")
            queued.append(QueuedItem(str(path), item.prompt, item.field))
            continue
        upload = parts[video.part]
        check_part_size(upload.size or 0, limits, field=f"{field_name}.part")
        if isinstance(video, FramesVideo):
            data = await upload.read()
            frames = await run_in_threadpool(frames_from_npy, data, video.fps, limits=limits,
                                             field=f"{field_name}.part")
            queued.append(QueuedItem(frames, item.prompt, item.field))
        else:
            path = await run_in_threadpool(save_upload, upload.file, upload_dir, filename=upload.filename)
            uploads.append(path)
            queued.append(QueuedItem(str(path), item.prompt, item.field, upload=path))
    return queued
