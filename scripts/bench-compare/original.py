#!/usr/bin/env python3
"""The original design (shared/seed/original-article-ja.txt), rebuilt as a benchmark baseline
for `make bench-compare`: aiortc receives the sender's video at `POST /offer`, each frame goes
through a multiprocessing queue drained to the newest frame into a worker process that runs the
filter, and the official Sora Python SDK (`sora-sdk`) publishes the result `sendonly`.

    .cache/bench-venv/bin/python scripts/bench-compare/original.py --listen 127.0.0.1:7860 \
        --signaling-url ws://127.0.0.1:7000/signaling --channel-id orig --filter background-blur

Kept from the article: `SoraSink.consume()` awaits `track.recv()`, `push_pop()` empties the
input queue, puts the new frame and takes a finished one if there is one (so a result is
published when the next frame arrives), the worker is a `spawn`ed `Process` with a
`RawValue` counter, `video_bit_rate=1000`. Changed for a fair and measurable run: frames cross
the queue as BGR numpy arrays (what OpenCV, ONNX Runtime and `on_captured()` take; the article
sends PIL images), the SDK is told `degradation_preference=MAINTAIN_RESOLUTION` (otherwise it
starts at a quarter of the size), no TLS or static files, `GET /healthz` answers once the worker
has its model loaded, and `GET /stats` counts frames.

Filters: `passthrough`, or `background-blur` with livefilter's model and defaults
(models/selfie.onnx: 256x256 RGB 0..1 NHWC; bilinear stretch as the relay's preprocessing; mask
smoothed over time 0.5, feathered by a 2-pixel box blur x3, 0.3-wide ramp around threshold 0.5;
the background blurred at a quarter of the size, weighted by the background share, radius 12
output pixels; alpha-blended at full size with OpenCV).
"""

import argparse
import asyncio
import logging
import math
import multiprocessing as mp
import traceback
from queue import Empty

from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

logger = logging.getLogger("original")
pcs = set()


# --- the worker process (the article's sub_main) --------------------------------------------


class BackgroundBlur:
    """livefilter's background-blur, the way a Python developer writes it with OpenCV."""

    def __init__(self, model, radius=12, smoothing=0.5, feather=2, threshold=0.5, softness=0.3):
        import cv2
        import numpy as np
        import onnxruntime as ort

        self.cv2, self.np = cv2, np
        self.session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.radius, self.smoothing, self.feather = radius, smoothing, feather
        self.threshold, self.softness = threshold, softness
        self.previous = None

    def __call__(self, bgr):
        cv2, np = self.cv2, self.np
        h, w = bgr.shape[:2]
        rgb = cv2.cvtColor(cv2.resize(bgr, (256, 256), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
        x = rgb.astype(np.float32)[np.newaxis] * (1.0 / 255.0)
        mask = self.session.run(None, {self.input_name: x})[0][0, :, :, 0]
        if self.previous is not None:
            mask = self.smoothing * self.previous + (1.0 - self.smoothing) * mask
        self.previous = mask
        k = 2 * self.feather + 1
        for _ in range(3):
            mask = cv2.blur(mask, (k, k), borderType=cv2.BORDER_REPLICATE)
        lo = self.threshold - self.softness / 2
        alpha = np.clip((mask - lo) / self.softness, 0.0, 1.0)
        # Background: a quarter of the size, blurred, weighted by the background share.
        sw, sh = math.ceil(w / 4), math.ceil(h / 4)
        small = cv2.resize(bgr, (sw, sh), interpolation=cv2.INTER_AREA).astype(np.float32)
        weight = 1.0 - cv2.resize(alpha, (sw, sh), interpolation=cv2.INTER_LINEAR)
        r = max(self.radius // 4, 1)
        sigma = math.sqrt(3 * ((2 * r + 1) ** 2 - 1) / 12)  # three box passes of radius r
        num = cv2.GaussianBlur(small * weight[:, :, np.newaxis], (0, 0), sigma)
        den = cv2.GaussianBlur(weight, (0, 0), sigma)
        background = num / np.maximum(den, 1e-3)[:, :, np.newaxis]
        background = cv2.resize(background, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.uint8)
        a = cv2.resize(alpha, (w, h), interpolation=cv2.INTER_LINEAR)
        return cv2.blendLinear(bgr, background, a, 1.0 - a)


def sub_main(filter_name, model, input_queue, output_queue, processed_count, ready):
    """The worker: takes frames from `input_queue`, filters them, puts them on `output_queue`."""
    apply = BackgroundBlur(model) if filter_name == "background-blur" else (lambda img: img)
    ready.set()
    while True:
        img = input_queue.get()
        if img is None:
            return
        output_queue.put(apply(img))
        processed_count.value += 1


# --- the main process (the article's program) -----------------------------------------------


class Worker:
    """The queues and the worker process."""

    def __init__(self, filter_name, model):
        ctx = mp.get_context("spawn")
        self.input_queue = ctx.Queue()
        self.output_queue = ctx.Queue()
        self.processed_count = ctx.RawValue("i", 0)
        self.ready = ctx.Event()
        self.process = ctx.Process(
            target=sub_main,
            args=(filter_name, model, self.input_queue, self.output_queue, self.processed_count, self.ready),
            daemon=True,
        )
        self.process.start()

    def push_pop(self, frame):
        """The article's push_pop: drop stale input, queue the newest, take a result if ready."""
        try:
            while not self.input_queue.empty():
                self.input_queue.get_nowait()
        except Empty:
            pass
        self.input_queue.put(frame.to_ndarray(format="bgr24"))
        try:
            return self.output_queue.get_nowait()
        except Empty:
            return None


class SoraSink:
    """Consumes a received video track and publishes what the worker returns through sora-sdk."""

    def __init__(self, args, worker, counters):
        self.args, self.worker, self.counters = args, worker, counters
        self.tasks = {}
        self.disconnected = False

    def add_track(self, track):
        self.tasks.setdefault(track, None)

    async def start(self):
        for track, task in self.tasks.items():
            if task is None:
                self.tasks[track] = asyncio.ensure_future(self.consume(track))

    async def stop(self):
        for task in self.tasks.values():
            if task is not None:
                task.cancel()
        self.tasks = {}

    def on_disconnect(self, error_code, message):
        logger.info("on_disconnect: error_code: %s, message: %s", error_code, message)
        self.disconnected = True

    async def consume(self, track):
        import sora_sdk

        sora = sora_sdk.Sora()
        video_source = sora.create_video_source()
        conn = sora.create_connection(
            signaling_urls=[self.args.signaling_url],
            role="sendonly",
            channel_id=self.args.channel_id,
            metadata={"access_token": "bench"},
            audio=False,
            video=True,
            video_source=video_source,
            video_codec_type="VP8",
            video_bit_rate=self.args.bitrate_kbps,
            degradation_preference=sora_sdk.SoraDegradationPreference.MAINTAIN_RESOLUTION,
        )
        conn.on_disconnect = self.on_disconnect
        conn.connect()
        try:
            while not self.disconnected:
                try:
                    frame = await track.recv()
                    self.counters["received"] += 1
                    img = self.worker.push_pop(frame)
                    if img is None:
                        continue
                    video_source.on_captured(img)
                    self.counters["published"] += 1
                except MediaStreamError:
                    try:
                        await asyncio.sleep(0.1)
                    except asyncio.CancelledError:
                        break
        except asyncio.CancelledError:
            pass
        except Exception:  # noqa: BLE001 - the article's catch-all, logged
            traceback.print_exc()
        finally:
            conn.disconnect()


def make_app(args, worker):
    counters = {"received": 0, "published": 0, "sessions": 0}

    async def offer(request):
        params = await request.json()
        offer = RTCSessionDescription(sdp=params["sdp"], type=params["type"])
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pcs.add(pc)
        counters["sessions"] += 1
        sink = SoraSink(args, worker, counters)

        @pc.on("connectionstatechange")
        async def on_connectionstatechange():
            logger.info("connection state is %s", pc.connectionState)
            if pc.connectionState == "failed":
                await pc.close()
                await sink.stop()
                pcs.discard(pc)

        @pc.on("track")
        def on_track(track):
            if track.kind == "video":
                sink.add_track(track)

            @track.on("ended")
            async def on_ended():
                await sink.stop()

        await pc.setRemoteDescription(offer)
        await pc.setLocalDescription(await pc.createAnswer())
        await sink.start()
        return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type})

    async def healthz(_request):
        if worker.ready.is_set():
            return web.Response(text="ok")
        return web.Response(status=503, text="worker loading")

    async def stats(_request):
        return web.json_response({**counters, "processed": worker.processed_count.value})

    async def on_shutdown(_app):
        await asyncio.gather(*(pc.close() for pc in pcs))
        pcs.clear()

    app = web.Application()
    app.on_shutdown.append(on_shutdown)
    app.router.add_post("/offer", offer)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/stats", stats)
    return app


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", default="127.0.0.1:7860", help="HOST:PORT for /offer")
    p.add_argument("--signaling-url", required=True)
    p.add_argument("--channel-id", required=True)
    p.add_argument("--filter", default="passthrough", choices=["passthrough", "background-blur"])
    p.add_argument("--model", default="models/selfie.onnx")
    p.add_argument("--bitrate-kbps", type=int, default=1000, help="sora-sdk video_bit_rate")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    worker = Worker(args.filter, args.model)
    host, port = args.listen.rsplit(":", 1)
    logger.info("worker %d started (%s); listening on http://%s:%s", worker.process.pid, args.filter, host, port)
    web.run_app(make_app(args, worker), host=host, port=int(port), access_log=None, print=None)


if __name__ == "__main__":
    main()
