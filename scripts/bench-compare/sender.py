#!/usr/bin/env python3
"""The shared sender of `make bench-compare`: an aiortc client that streams the same VP8 video
to each system's `POST /offer` (video only), with a frame id painted into each frame, and
records when each frame left.

    python sender.py prepare --clip clip.y4m --out sender.ivf --frames 2400 --bitrate-kbps 2500
    python sender.py send --ivf sender.ivf --offer-url http://127.0.0.1:8080/offer --out sent.json

`prepare` encodes the clip once (forwards then backwards, so no jump at the loop) with frame n
carrying id n, VP8 CBR at --bitrate-kbps with a keyframe every 2 s, into an IVF file. `send`
replays those frames, paced at the clip's rate by aiortc, as pre-encoded packets: the sender
costs little CPU beside the systems under test, and every system and every run gets exactly
the same input. Keyframe requests cannot be honoured (the next periodic keyframe serves).
It stops after --seconds, at the last frame, or on SIGTERM/SIGINT, and writes
{"sent_ms": [unix ms when frame 0, 1, ... was handed to the packetizer], ...} to --out.

The frame id is the band sora-endpoint reads back (sora-endpoint/src/frameid.rs): 16 cells
across the top ninth of the picture, cell 0 white, cells 1..13 the id's 13 bits (most
significant first, white = 1), cell 14 even parity over cells 1..14, cell 15 black. Ids wrap at
8192 (4.5 minutes at 30 fps).
"""

import argparse
import asyncio
import json
import os
import signal
import sys
import time

import aiohttp
import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription, VideoStreamTrack
from aiortc.mediastreams import MediaStreamError

CELLS = 16
BAND_FRACTION = 9
ID_BITS = 13
ID_MODULUS = 1 << ID_BITS
WHITE, BLACK = 235, 16


def cell_pattern(frame_id):
    """Whether each of the 16 cells is white for `frame_id` (as frameid.rs's cell_pattern)."""
    frame_id %= ID_MODULUS
    bits = [(frame_id >> (ID_BITS - 1 - b)) & 1 == 1 for b in range(ID_BITS)]
    return [True, *bits, sum(bits) % 2 == 1, False]


def paint_id(y, u, v, frame_id):
    """Paints the id band into I420 planes (numpy views, modified in place)."""
    height, width = y.shape
    band = height // BAND_FRACTION
    for index, white in enumerate(cell_pattern(frame_id)):
        x0, x1 = width * index // CELLS, width * (index + 1) // CELLS
        y[:band, x0:x1] = WHITE if white else BLACK
        u[: (band + 1) // 2, x0 // 2 : (x1 + 1) // 2] = 128
        v[: (band + 1) // 2, x0 // 2 : (x1 + 1) // 2] = 128


def read_y4m(path):
    """The frames of a 4:2:0 y4m file as (width, height, fps, [I420 frame as (H*3/2, W) u8])."""
    with open(path, "rb") as f:
        data = f.read()
    header_end = data.index(b"\n")
    fields = data[:header_end].split()
    if fields[0] != b"YUV4MPEG2":
        raise ValueError(f"{path} is not a y4m file")
    width = height = 0
    fps = 30.0
    for field in fields[1:]:
        tag, value = chr(field[0]), field[1:].decode()
        if tag == "W":
            width = int(value)
        elif tag == "H":
            height = int(value)
        elif tag == "F":
            num, den = value.split(":")
            fps = int(num) / int(den)
        elif tag == "C" and not value.startswith("420"):
            raise ValueError(f"{path}: only 4:2:0 clips, not C{value}")
    size = width * height * 3 // 2
    frames = []
    pos = header_end + 1
    while pos < len(data):
        pos = data.index(b"\n", pos) + 1  # "FRAME[ params]\n"
        plane = np.frombuffer(data, dtype=np.uint8, count=size, offset=pos)
        frames.append(plane.reshape(height * 3 // 2, width))
        pos += size
    return width, height, fps, frames


def prepare(args):
    """Encodes the clip with ids painted in into an IVF file of `args.frames` VP8 frames."""
    width, height, fps, frames = read_y4m(args.clip)
    order = list(range(len(frames))) + list(range(len(frames) - 2, 0, -1))
    bps = args.bitrate_kbps * 1000
    tmp = args.out + ".part"
    with av.open(tmp, "w", format="ivf") as out:
        stream = out.add_stream("libvpx", rate=round(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = bps
        stream.codec_context.gop_size = round(fps * 2)
        stream.codec_context.options = {
            "deadline": "realtime",
            "cpu-used": "6",
            "lag-in-frames": "0",
            "minrate": str(bps),
            "maxrate": str(bps),
            "bufsize": str(bps),
            "undershoot-pct": "100",
            "overshoot-pct": "15",
            "static-thresh": "1",
        }
        for n in range(args.frames):
            i420 = frames[order[n % len(order)]].copy()
            y = i420[:height]
            chroma = i420[height:].reshape(2, height // 2, width // 2)
            paint_id(y, chroma[0], chroma[1], n)
            frame = av.VideoFrame.from_ndarray(i420, format="yuv420p")
            frame.pts = n
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    os.replace(tmp, args.out)
    print(json.dumps({"event": "prepared", "out": args.out, "frames": args.frames, "fps": fps}), flush=True)
    return 0


class ReplayTrack(VideoStreamTrack):
    """Pre-encoded VP8 frames, in order, at the clip's rate; notes when each one left.

    A keyframe request (PLI/FIR) is answered as a browser would, with a keyframe at once: the
    replay jumps to the next pre-encoded keyframe (the ids in between are never sent, and are
    recorded as None).
    """

    def __init__(self, packets):
        super().__init__()
        self.packets = packets
        self.sent_ms = []
        self.exhausted = asyncio.Event()
        self.keyframe_wanted = False
        self.keyframe_requests = 0

    def request_keyframe(self):
        self.keyframe_wanted = True
        self.keyframe_requests += 1

    async def recv(self):
        pts, time_base = await self.next_timestamp()
        n = len(self.sent_ms)
        if self.keyframe_wanted:
            self.keyframe_wanted = False
            ahead = next((i for i in range(n, len(self.packets)) if self.packets[i].is_keyframe), n)
            self.sent_ms.extend([None] * (ahead - n))
            n = ahead
        if n >= len(self.packets):
            self.exhausted.set()
            self.stop()
            raise MediaStreamError
        packet = self.packets[n]
        packet.pts, packet.time_base = pts, time_base
        self.sent_ms.append(time.time() * 1000.0)
        return packet


def load_ivf(path):
    """The VP8 packets of an IVF file, in order, and the frame rate."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 30)
        packets = [p for p in container.demux(stream) if p.size > 0]
    return packets, fps


async def send(args):
    packets, fps = load_ivf(args.ivf)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    track = ReplayTrack(packets)
    transceiver = pc.addTransceiver(track, direction="sendonly")
    vp8 = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == "video/VP8"]
    transceiver.setCodecPreferences(vp8)
    # aiortc asks its encoder for a keyframe on PLI/FIR; there is none here, so the request goes
    # to the replay instead.
    ask_encoder = transceiver.sender._send_keyframe

    def send_keyframe():
        track.request_keyframe()
        ask_encoder()

    transceiver.sender._send_keyframe = send_keyframe
    connected = asyncio.Event()
    failed = asyncio.Event()

    @pc.on("connectionstatechange")
    def on_state():
        print(json.dumps({"event": "state", "state": pc.connectionState}), flush=True)
        if pc.connectionState == "connected":
            connected.set()
        elif pc.connectionState in ("failed", "closed"):
            failed.set()

    await pc.setLocalDescription(await pc.createOffer())
    body = {"sdp": pc.localDescription.sdp, "type": "offer"}
    offer_posted_ms = time.time() * 1000.0
    async with aiohttp.ClientSession() as http:
        async with http.post(args.offer_url, json=body) as resp:
            if resp.status >= 300:
                raise RuntimeError(f"POST {args.offer_url}: {resp.status} {await resp.text()}")
            answer = await resp.json()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(connected.wait(), args.connect_timeout)
        print(json.dumps({"event": "connected", "t": time.time()}), flush=True)
        waiters = [asyncio.ensure_future(e.wait()) for e in (stop, failed, track.exhausted)]
        await asyncio.wait(waiters, timeout=args.seconds, return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()
    finally:
        await pc.close()
        result = {
            "offer_url": args.offer_url,
            "fps": fps,
            "frames_available": len(packets),
            "failed": failed.is_set(),
            "exhausted": track.exhausted.is_set(),
            "id_modulus": ID_MODULUS,
            "offer_posted_ms": offer_posted_ms,
            "sent_ms": track.sent_ms,
            "keyframe_requests": track.keyframe_requests,
        }
        with open(args.out, "w") as f:
            json.dump(result, f)
        print(json.dumps({"event": "done", "frames": len(track.sent_ms)}), flush=True)
    return 1 if failed.is_set() else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="encode the clip with frame ids into an IVF file")
    prep.add_argument("--clip", required=True, help="4:2:0 y4m clip")
    prep.add_argument("--out", required=True, help="IVF file to write")
    prep.add_argument("--frames", type=int, default=2400, help="frames to encode (ids 0..frames-1)")
    prep.add_argument("--bitrate-kbps", type=int, default=2500, help="VP8 bitrate of the input")
    snd = sub.add_parser("send", help="stream the IVF file to a system's /offer")
    snd.add_argument("--ivf", required=True, help="made by prepare")
    snd.add_argument("--offer-url", required=True, help="the system's POST /offer")
    snd.add_argument("--out", required=True, help="JSON file of send times")
    snd.add_argument("--seconds", type=float, default=80.0, help="stream at most this long after connecting")
    snd.add_argument("--connect-timeout", type=float, default=20.0)
    args = p.parse_args()
    if args.command == "prepare":
        return prepare(args)
    return asyncio.run(send(args))


if __name__ == "__main__":
    sys.exit(main())
