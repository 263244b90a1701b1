"""The pooled text client against a real HTTP server on 127.0.0.1: answers that arrive in pieces
(chunked, compressed, through a proxy) are read whole, and bounded."""

from __future__ import annotations

import asyncio
import json
import random
import string

import pytest
from aiohttp import web

from text_api import MAX_BODY_BYTES, TextApi, TextApiError

# Text that compresses poorly, so that a gzip answer comes in pieces too.
TEXT = "".join(random.Random(1).choices(string.ascii_letters, k=200_000))
ANSWER = {"output": [{"type": "message", "content": [{"type": "output_text", "text": TEXT}]}]}


async def serve(handler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/responses", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/responses"


def streaming(body: bytes, pieces: int, *, status: int = 200, compress: bool = False):
    """A handler that sends `body` in `pieces` writes with a pause between them."""

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(status=status, headers={"Content-Type": "application/json"})
        if compress:
            response.enable_compression(web.ContentCoding.gzip)
        await response.prepare(request)
        size = -(-len(body) // pieces)
        for start in range(0, len(body), size):
            await response.write(body[start : start + size])
            await asyncio.sleep(0.05)
        await response.write_eof()
        return response

    return handler


async def post(handler) -> object:
    runner, url = await serve(handler)
    api = TextApi()
    await api.start()
    try:
        return await api.post_json(url, {"Authorization": "Bearer k"}, {"model": "m"}, timeout=5)
    finally:
        await api.close()
        await runner.cleanup()


@pytest.mark.parametrize("compress", [False, True], ids=["chunked", "gzip"])
async def test_an_answer_streamed_in_several_pieces_is_read_whole(compress):
    body = json.dumps(ANSWER).encode()
    assert await post(streaming(body, 5, compress=compress)) == ANSWER


async def test_an_oversize_streamed_answer_is_too_large():
    body = b'{"text": "' + b"y" * MAX_BODY_BYTES + b'"}'
    with pytest.raises(TextApiError) as failed:
        await post(streaming(body, 8))
    assert str(failed.value) == "the answer is too large"


async def test_an_error_status_is_reported_by_its_code_whatever_the_body():
    body = b'{"error": {"message": "' + b"z" * MAX_BODY_BYTES + b'"}}'
    with pytest.raises(TextApiError) as failed:
        await post(streaming(body, 4, status=503))
    assert str(failed.value) == "HTTP 503"
