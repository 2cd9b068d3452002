"""The downloader's fast paths give the same results as the plain ones: batched decoding, the
bilinear resize after a JPEG draft, and the batching decoder in front of threads and processes."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image

from pipeline.stages.download import Options, _Decoder
from shards.image import ImageOptions, process_image, process_images

from .conftest import bomb_header, jpeg


def _mixed(real_images: dict[str, bytes]) -> list[bytes]:
    """Real photos, a photo enlarged so the draft applies, a bomb, a cut JPEG and HTML."""
    photos = list(real_images.values())
    big = Image.open(io.BytesIO(photos[0])).convert("RGB")
    big = jpeg(big.resize((big.width * 3, big.height * 3)))
    return [*photos, big, bomb_header(photos[0]), photos[1][: len(photos[1]) // 2], b"<html>gone</html>"]


def _stable(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "data"} | {"has_data": "data" in result}


def test_process_images_matches_process_image_in_order(real_images):
    opts = ImageOptions(size=256, mode="shortest")
    datas = _mixed(real_images)
    batch = process_images(datas, opts)
    assert [_stable(r) for r in batch] == [_stable(process_image(d, opts)) for d in datas]
    reasons = [r["reason"] for r in batch[-3:]]
    assert reasons == ["decompression_bomb", "truncated_image", "not_an_image"]


@pytest.mark.parametrize("mode", ["shortest", "longest", "center_crop"])
def test_drafted_resize_gives_exact_target_size(real_images, mode):
    photo = Image.open(io.BytesIO(next(iter(real_images.values())))).convert("RGB")
    data = jpeg(photo.resize((2000, 1500)))
    result = process_image(data, ImageOptions(size=256, mode=mode))
    expected = {"shortest": (341, 256), "longest": (256, 192), "center_crop": (256, 256)}[mode]
    assert result["ok"]
    assert (result["stored_width"], result["stored_height"]) == expected
    assert Image.open(io.BytesIO(result["data"])).size == expected


@pytest.mark.parametrize("processes", [0, 1])
def test_batching_decoder_returns_each_callers_own_result(real_images, processes):
    datas = _mixed(real_images) * 3  # more images than one batch, so several tasks queue
    options = Options(size=256, resize_mode="shortest", processes=processes)

    async def run() -> list[dict]:
        decoder = _Decoder(options)
        try:
            return await asyncio.gather(*(decoder(d) for d in datas))
        finally:
            decoder.close()

    got = asyncio.run(run())
    want = [process_image(d, options.image_options()) for d in datas]
    assert [_stable(r) for r in got] == [_stable(r) for r in want]
    assert [r.get("data") for r in got] == [r.get("data") for r in want]


def test_batching_decoder_skips_cancelled_callers(real_images):
    data = next(iter(real_images.values()))

    async def run() -> tuple[list, dict]:
        decoder = _Decoder(Options(processes=0))
        try:
            waiting = [asyncio.ensure_future(decoder(data)) for _ in range(12)]
            await asyncio.sleep(0)
            for task in waiting[4:]:
                task.cancel()
            done = await asyncio.gather(*waiting, return_exceptions=True)
            after = await decoder(data)  # the decoder still works after cancellations
            return done, after
        finally:
            decoder.close()

    done, after = asyncio.run(run())
    assert all(r["ok"] for r in done[:4])
    assert all(isinstance(r, asyncio.CancelledError) for r in done[4:])
    assert after["ok"]
