"""The "AI" of the tutorial, without a model: a fake prompt rewriter and a PNG drawn from a hash.

Both are deterministic, so the same prompt always costs the same tokens and gives the same image.
Swap them for real calls (an LLM that rewrites the prompt, a diffusion model) in your own app.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from typing import Any

IMAGE_MODEL = "fake-diffusion-1"
REWRITE_MODEL = "fake-rewriter-1"
RESOLUTIONS = {"64x64": 64, "256x256": 256, "512x512": 512}
_STYLE = "digital art, soft light, highly detailed"
_SYSTEM_PROMPT_TOKENS = 24  # what a real rewriter's instructions would cost on every call


def rewrite_prompt(prompt: str) -> tuple[str, dict[str, Any]]:
    """The rewritten prompt and an OpenAI-shaped chat completion with token usage.

    A word counts as one token here; a real model's `response.usage` has the same shape, which is all
    `agent.templates.llm_usage_event` reads.
    """
    rewritten = f"{prompt.strip()}, {_STYLE}"
    prompt_tokens = _SYSTEM_PROMPT_TOKENS + len(prompt.split())
    completion_tokens = len(rewritten.split())
    response = {
        "id": "chatcmpl-" + hashlib.sha256(prompt.encode()).hexdigest()[:24],
        "model": REWRITE_MODEL,
        "choices": [{"message": {"role": "assistant", "content": rewritten}}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
    return rewritten, response


def draw_png(prompt: str, size: int) -> bytes:
    """A size x size PNG: an 8 x 8 mirrored grid of 4 colours chosen by sha256(prompt)."""
    digest = hashlib.sha256(prompt.encode()).digest()
    palette = [digest[i : i + 3] for i in range(0, 12, 3)]
    bits = int.from_bytes(digest[12:], "big")
    cell = max(size // 8, 1)
    rows: list[bytes] = []
    for grid_y in range(8):
        half = [palette[(bits >> (2 * (grid_y * 4 + x))) & 3] for x in range(4)]
        pixels = b"".join(color * cell for color in half + half[::-1])
        line = b"\x00" + pixels.ljust(size * 3, b"\x00")  # filter byte 0: the row as is
        rows.extend([line] * cell)
    rows.extend([b"\x00" * (size * 3 + 1)] * (size - len(rows)))  # sizes not divisible by 8
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    data = zlib.compress(b"".join(rows[:size]))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
