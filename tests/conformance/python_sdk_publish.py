#!/usr/bin/env python3
"""Publishes generated video with the OFFICIAL Sora Python SDK (PyPI sora-sdk), sendonly.

Used by sora-endpoint's conformance tests to prove the local endpoint behaves like Sora, and
usable by hand:

    .cache/venv/bin/python tests/conformance/python_sdk_publish.py \
        --signaling-url ws://127.0.0.1:7000/signaling --channel-id test --seconds 3

Frames: a solid background of --color (so a receiver can check the colour it decodes in the
top-left corner) with a white bar moving through the centre (so consecutive frames differ), or
with --pattern noise, random pixels (as many bits as the encoder is allowed: for bitrate caps).

Publishing lasts --seconds, or ends earlier when a line "stop" arrives on stdin. Prints one JSON
line per event on stdout and a final line {"summary": {...}}; exits 0 when the SDK reported
connected (its own connection.created after the offer) and a clean disconnect.

Quirks of sora-sdk 2025.4.0 seen here: on_captured() takes BGR pixels (OpenCV order); frame
heights are cropped to a multiple of 16 (640x360 arrives as 640x352); without
degradation_preference=MAINTAIN_RESOLUTION the encoder starts at a quarter of the size.
"""

import argparse
import json
import os
import sys
import threading
import time

import sora_sdk

OPENH264_DEFAULT = "/usr/lib/x86_64-linux-gnu/libopenh264.so.7"


def emit(event, **fields):
    print(json.dumps({"event": event, "t": round(time.time(), 3), **fields}), flush=True)


def make_frames(width, height, rgb, count):
    """`count` distinct HxWx3 frames: background `rgb`, a white bar at a moving row.

    The SDK's on_captured() takes OpenCV-style BGR pixels, so the bytes are written B, G, R.
    """
    row = bytes(reversed(rgb)) * width
    base = bytearray(row * height)
    bar_h = max(2, height // 12)
    white_row = b"\xff" * (width * 3 // 2)
    x0 = width // 4 * 3
    frames = []
    for i in range(count):
        buf = bytearray(base)
        top = height // 4 + (i * 3) % max(1, height // 2 - bar_h)
        for y in range(top, top + bar_h):
            start = (y * width) * 3 + x0
            buf[start : start + len(white_row)] = white_row
        frames.append(memoryview(buf).cast("B", (height, width, 3)))
    return frames


def make_noise_frames(width, height, count):
    """`count` HxWx3 frames of random pixels: the encoder needs every bit it may use."""
    return [memoryview(bytearray(os.urandom(width * height * 3))).cast("B", (height, width, 3)) for _ in range(count)]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--signaling-url", action="append", required=True, help="repeatable; all are tried at once")
    p.add_argument("--channel-id", required=True)
    p.add_argument("--client-id")
    p.add_argument("--metadata", default='{"access_token": "dummy"}', help="JSON")
    p.add_argument("--codec", default="VP8", choices=["VP8", "H264"])
    p.add_argument("--openh264", default=OPENH264_DEFAULT, help="libopenh264 for H264 (Debian libopenh264-7)")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--color", default="200,60,30", help="R,G,B of the background")
    p.add_argument("--bitrate", type=int, default=1000, help="kbit/s")
    p.add_argument("--pattern", default="bar", choices=["bar", "noise"], help="what the frames show")
    p.add_argument("--connect-timeout", type=float, default=20.0)
    args = p.parse_args()

    color = [int(c) for c in args.color.split(",")]
    metadata = json.loads(args.metadata)
    emit("start", sdk_version=getattr(sora_sdk, "__version__", "?"), codec=args.codec)

    if args.codec == "H264":
        caps = sora_sdk.get_video_codec_capability(openh264=args.openh264)
        pref = sora_sdk.create_video_codec_preference_from_implementation(
            caps, sora_sdk.SoraVideoCodecImplementation.CISCO_OPENH264
        )
        pref.merge(
            sora_sdk.create_video_codec_preference_from_implementation(
                caps, sora_sdk.SoraVideoCodecImplementation.INTERNAL
            )
        )
        codec_ok = any(
            c.type == sora_sdk.SoraVideoCodecType.H264 and c.encoder
            for e in caps.engines
            for c in e.codecs
        )
        emit("h264-capability", encoder=codec_ok, preference=pref.to_json())
        if not codec_ok:
            emit("error", message=f"no H264 encoder (openh264 at {args.openh264})")
            return 3
        sora = sora_sdk.Sora(openh264=args.openh264, video_codec_preference=pref)
    else:
        sora = sora_sdk.Sora()

    state = {
        "offer_connection_id": None,
        "notify_connection_id": None,
        "connected": False,
        "disconnect": None,
        "ws_close": None,
        "notifies": [],
        "frames_sent": 0,
    }
    connected = threading.Event()
    disconnected = threading.Event()

    def on_set_offer(raw):
        offer = json.loads(raw)
        state["offer_connection_id"] = offer.get("connection_id")
        emit("offer", connection_id=offer.get("connection_id"), mid=offer.get("mid"))

    def on_notify(raw):
        msg = json.loads(raw)
        state["notifies"].append(msg.get("event_type"))
        emit("notify", event_type=msg.get("event_type"), connection_id=msg.get("connection_id"))
        if (
            msg.get("event_type") == "connection.created"
            and msg.get("connection_id") is not None
            and msg.get("connection_id") == state["offer_connection_id"]
        ):
            state["notify_connection_id"] = msg["connection_id"]
            state["connected"] = True
            connected.set()

    def on_disconnect(code, message):
        state["disconnect"] = [int(code), str(code), message]
        emit("disconnect", code=int(code), name=str(code), message=message)
        disconnected.set()
        connected.set()  # unblock a waiter if it never connected

    def on_ws_close(code, reason):
        state["ws_close"] = [code, reason]
        emit("ws_close", code=code, reason=reason)

    def on_signaling_message(kind, direction, message):
        try:
            mtype = json.loads(message).get("type")
        except Exception:  # noqa: BLE001 - log what we can
            mtype = "?"
        emit("signaling", direction=str(direction), type=mtype)

    video_source = sora.create_video_source()
    conn = sora.create_connection(
        signaling_urls=args.signaling_url,
        role="sendonly",
        channel_id=args.channel_id,
        client_id=args.client_id,
        metadata=metadata,
        audio=False,
        video=True,
        video_source=video_source,
        video_codec_type=args.codec,
        video_bit_rate=args.bitrate,
        degradation_preference=sora_sdk.SoraDegradationPreference.MAINTAIN_RESOLUTION,
    )
    conn.on_set_offer = on_set_offer
    conn.on_notify = on_notify
    conn.on_disconnect = on_disconnect
    conn.on_ws_close = on_ws_close
    conn.on_signaling_message = on_signaling_message

    if args.pattern == "noise":
        frames = make_noise_frames(args.width, args.height, 32)
    else:
        frames = make_frames(args.width, args.height, color, 64)
    conn.connect()
    if not connected.wait(args.connect_timeout) or not state["connected"]:
        emit("error", message="not connected within timeout")
        conn.disconnect()
        disconnected.wait(10)
        print(json.dumps({"summary": state}), flush=True)
        return 2
    emit("connected", connection_id=state["notify_connection_id"])

    stop_requested = threading.Event()

    def watch_stdin():
        for line in sys.stdin:
            if line.strip() == "stop":
                stop_requested.set()
                return

    threading.Thread(target=watch_stdin, daemon=True).start()

    period = 1.0 / args.fps
    start = time.monotonic()
    next_at = start
    i = 0
    while time.monotonic() - start < args.seconds and not disconnected.is_set() and not stop_requested.is_set():
        video_source.on_captured(frames[i % len(frames)])
        i += 1
        next_at += period
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    state["frames_sent"] = i
    emit("published", frames=i, seconds=round(time.monotonic() - start, 2))
    try:
        for report in json.loads(conn.get_stats()):
            if report.get("type") == "outbound-rtp" and report.get("kind") == "video":
                keep = ("framesEncoded", "packetsSent", "frameWidth", "frameHeight", "encoderImplementation",
                        "qualityLimitationReason", "keyFramesEncoded", "pliCount", "nackCount")
                state["outbound"] = {k: report.get(k) for k in keep}
                emit("outbound-rtp", **state["outbound"])
    except Exception as e:  # noqa: BLE001 - stats are diagnostics only
        emit("stats-error", message=str(e))

    conn.disconnect()
    if not disconnected.wait(10):
        emit("error", message="no disconnect callback within 10 s")
        print(json.dumps({"summary": state}), flush=True)
        return 4
    print(json.dumps({"summary": state}), flush=True)
    clean = state["disconnect"] is not None and state["disconnect"][0] == int(
        sora_sdk.SoraSignalingErrorCode.CLOSE_SUCCEEDED
    )
    return 0 if clean else 5


if __name__ == "__main__":
    sys.exit(main())
