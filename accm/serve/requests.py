"""Reading an OpenAI chat-completions request: one image (a data: URI, or a local file when the
server allows a directory) and the text of the last user message. Every problem is an ``ApiError``
with the HTTP status and an OpenAI-style one-line message."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..errors import InputError
from ..inputs import check_prompt, decode_image


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclasses.dataclass
class ChatRequest:
    model: str | None
    image: object  # PIL.Image
    prompt: str
    max_tokens: int
    stream: bool
    include_usage: bool


IMAGE_TYPES = ("image/png", "image/jpeg", "image/jpg", "image/webp", "image/gif", "image/bmp")


def _image_from_url(url: str, allow_files: Path | None):
    if not isinstance(url, str) or not url:
        raise ApiError(400, "image_url.url must be a string", "messages")
    if url.startswith("data:"):
        head, _, payload = url[5:].partition(",")
        media, *params = head.split(";")
        if media.lower() not in IMAGE_TYPES:
            raise ApiError(400, f"the data: URI is not an image ({media or 'no media type'})", "messages")
        if "base64" not in params:
            raise ApiError(400, "the image data: URI must be base64", "messages")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "the image data: URI is not valid base64", "messages") from None
        if not data:
            raise ApiError(400, "the image is empty", "messages")
        return _decode(io.BytesIO(data), "the data: URI")
    scheme = urlparse(url).scheme.lower()
    if scheme in ("http", "https"):
        raise ApiError(400, "remote image URLs are not fetched: send the image as a base64 data: URI", "messages")
    if scheme not in ("", "file"):
        raise ApiError(400, f"unsupported image URL scheme {scheme!r}: send a base64 data: URI", "messages")
    if allow_files is None:
        raise ApiError(400, "local image files are refused (start the server with --allow-files DIR)", "messages")
    path = Path(unquote(urlparse(url).path) if scheme == "file" else url).expanduser().resolve()
    root = allow_files.resolve()
    if root not in path.parents:
        raise ApiError(400, f"image files are served only from {root}", "messages")
    if not path.is_file():
        raise ApiError(400, f"image not found: {path.name}", "messages")
    return _decode(path, path.name)


def _decode(source, name: str):
    try:
        return decode_image(source, name)
    except InputError as e:
        raise ApiError(400, str(e), "messages") from None


def parse_chat(body, allow_files: Path | None, max_tokens_limit: int, default_max_tokens: int) -> ChatRequest:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", "messages")
    user = next((m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), None)
    if user is None:
        raise ApiError(400, "no user message", "messages")
    content = user.get("content")
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
    if not isinstance(parts, list):
        raise ApiError(400, "message content must be a string or a list of parts", "messages")
    texts, images = [], []
    for part in parts:
        if not isinstance(part, dict):
            raise ApiError(400, "each content part must be an object", "messages")
        if part.get("type") == "text":
            if not isinstance(part.get("text"), str):
                raise ApiError(400, "a text part needs a string 'text'", "messages")
            texts.append(part["text"])
        elif part.get("type") == "image_url":
            image_url = part.get("image_url")
            images.append(image_url.get("url") if isinstance(image_url, dict) else image_url)
        else:
            raise ApiError(400, f"unsupported content part type {part.get('type')!r}", "messages")
    if len(images) != 1:
        raise ApiError(400, f"the user message must hold exactly one image_url part (it has {len(images)})",
                       "messages")
    prompt = " ".join(t.strip() for t in texts if t.strip())
    try:
        check_prompt(prompt)
    except InputError as e:
        raise ApiError(400, str(e), "messages") from None
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens", default_max_tokens))
    if max_tokens is None:
        max_tokens = default_max_tokens
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= max_tokens_limit:
        raise ApiError(400, f"max_tokens must be an integer in [1, {max_tokens_limit}]", "max_tokens")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false", "stream")
    options = body.get("stream_options") or {}
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, "model must be a string", "model")
    image = _image_from_url(images[0], allow_files)
    return ChatRequest(model, image, prompt, max_tokens, stream,
                       bool(isinstance(options, dict) and options.get("include_usage")))
