"""The old way, as a baseline: build the AICP_SOUND envelope in Python and send it with kafka-python, calling
flush() after every message, as the uploader this project replaces did.

    python bench/old_uploader.py --bootstrap 127.0.0.1:29092 --topic T --for-s 10 --frame-ms 1000

Sends for --for-s seconds (or exactly --frames frames). Prints one JSON line: frames, seconds, frames_per_s,
envelope bytes.
"""
import argparse
import base64
import json
import struct
import time
import uuid

from kafka import KafkaProducer


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--for-s", type=float, default=None)
    p.add_argument("--frame-ms", type=int, default=1000)
    a = p.parse_args()
    if (a.frames is None) == (a.for_s is None):
        p.error("give exactly one of --frames and --for-s")
    samples = 16 * a.frame_ms
    pcm = struct.pack("<%dh" % samples, *[((n * 7919) % 20000) - 10000 for n in range(samples)])
    producer = KafkaProducer(bootstrap_servers=a.bootstrap, acks="all", max_request_size=2_000_000)
    started = time.perf_counter()
    size = 0
    seq = 0
    while (a.frames is None or seq < a.frames) and (a.for_s is None or time.perf_counter() - started < a.for_s):
        envelope = {
            "uuid": str(uuid.uuid4()), "ver": "1.0", "sysType": 3, "sysTag": "AICP_SOUND",
            "collectTimestamp": int(time.time() * 1000),
            "deviceInfo": {"carID": "OLD-1", "railType": 0},
            "locationInfo": {"unitId": "bench", "sty": ""},
            "segmentId": "old-1", "inspectionInfo": "",
            "originData": {"base64": base64.b64encode(pcm).decode(), "hz": 16000, "bits": 16,
                           "size": len(pcm), "duration": a.frame_ms},
        }
        value = json.dumps(envelope, separators=(",", ":")).encode()
        size = len(value)
        producer.send(a.topic, key=b"OLD-1", value=value)
        producer.flush()
        seq += 1
    seconds = time.perf_counter() - started
    print(json.dumps({"frames": seq, "seconds": seconds, "frames_per_s": seq / seconds, "envelope_bytes": size}))


if __name__ == "__main__":
    main()
