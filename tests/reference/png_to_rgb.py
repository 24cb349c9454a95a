#!/usr/bin/env python3
"""Decode an 8-bit, non-interlaced RGB/RGBA/grey PNG to packed RGB8 (stdlib only: zlib).

Exists so the reference tools need no imaging library: ort_reference.py reads raw RGB8, and the
test photo (.cache/testdata/astronaut.png) is a plain 8-bit RGB PNG.
Usage: png_to_rgb.py IN.png OUT.rgb   (prints "WIDTH HEIGHT")
"""
import struct
import sys
import zlib

CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # PNG colour type -> samples per pixel


def decode(data):
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, hdr = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            hdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    width, height, depth, ctype, _, _, interlace = hdr
    if depth != 8 or interlace != 0 or ctype not in CHANNELS:
        raise ValueError(f"unsupported PNG: depth {depth}, colour type {ctype}, interlace {interlace}")
    bpp = CHANNELS[ctype]
    stride = width * bpp
    raw = zlib.decompress(b"".join(idat))
    out = bytearray(height * stride)
    prev = bytearray(stride)
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + b) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + ((a + b) >> 1)) & 0xFF
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
            elif ftype != 0:
                raise ValueError(f"bad filter {ftype}")
        out[y * stride:(y + 1) * stride] = line
        prev = line
    if ctype == 2:
        rgb = bytes(out)
    else:  # grey, grey+alpha, RGBA -> RGB (alpha dropped)
        rgb = bytearray()
        for px in range(width * height):
            s = out[px * bpp:(px + 1) * bpp]
            rgb += bytes((s[0], s[0], s[0])) if ctype in (0, 4) else bytes(s[:3])
        rgb = bytes(rgb)
    return width, height, rgb


def main():
    with open(sys.argv[1], "rb") as f:
        width, height, rgb = decode(f.read())
    with open(sys.argv[2], "wb") as f:
        f.write(rgb)
    print(width, height)


if __name__ == "__main__":
    main()
