"""Write an insightface-layout pack with MXNet's own writer and print a JSON
manifest of what it wrote.

Usage: python write_pack.py PATH.rec   (the index goes to PATH.idx)

Layout: record 0 has labels (N+1, N+1+K); images are keys 1..N; identity
records are keys N+1..N+K with labels [start, end) of their image keys. The
records are written out of key order (header, images in reverse, identities)
and several image payloads contain the RecordIO magic, so that MXNet splits
them into several frames. crates/data/tests/mxnet_compat.rs reads the pack with
lgaf-data and compares it with the manifest.
"""

import hashlib
import json
import os
import struct
import sys

import mxnet as mx

MAGIC = struct.pack("<I", 0xCED7230A)
IMAGES_PER_IDENTITY = [3, 1, 4, 2, 5]


def image_bytes(key):
    """A deterministic stand-in for an encoded image; how the magic sits in
    it depends on key % 4 (the IRHeader is 24 bytes, so an aligned position
    in the image is an aligned position in the record)."""
    body = hashlib.sha256(b"image %d" % key).digest() * (key % 3 + 1)
    variant = key % 4
    if variant == 0:
        return MAGIC + body
    if variant == 1:
        return body[:8] + MAGIC + body + MAGIC + MAGIC
    if variant == 2:
        return body + b"x" + MAGIC  # unaligned: stays one frame
    return body + b"tail"


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    rec_path = sys.argv[1]
    idx_path = os.path.splitext(rec_path)[0] + ".idx"

    labels = [
        identity
        for identity, count in enumerate(IMAGES_PER_IDENTITY)
        for _ in range(count)
    ]
    image_count = len(labels)
    identity_count = len(IMAGES_PER_IDENTITY)
    header = [image_count + 1, image_count + 1 + identity_count]

    identities = []
    start = 1
    for count in IMAGES_PER_IDENTITY:
        identities.append([start, start + count])
        start += count

    writer = mx.recordio.MXIndexedRecordIO(idx_path, rec_path, "w")
    order = [0]
    writer.write_idx(0, mx.recordio.pack(mx.recordio.IRHeader(0, header, 0, 0), b""))

    images = []
    for key in range(image_count, 0, -1):
        label = labels[key - 1]
        data = image_bytes(key)
        # insightface writes scalar labels; some tools write a label vector
        # whose first entry is the identity.
        ir_label = [float(label), 7.0] if key % 5 == 0 else float(label)
        writer.write_idx(key, mx.recordio.pack(mx.recordio.IRHeader(0, ir_label, key, 0), data))
        order.append(key)
        images.append(
            {
                "key": key,
                "label": label,
                "len": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )

    for identity, (first, end) in enumerate(identities):
        key = image_count + 1 + identity
        writer.write_idx(
            key, mx.recordio.pack(mx.recordio.IRHeader(0, [first, end], key, 0), b"")
        )
        order.append(key)
    writer.close()

    images.sort(key=lambda image: image["key"])
    json.dump(
        {
            "header": header,
            "identities": identities,
            "images": images,
            "file_order": order,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
