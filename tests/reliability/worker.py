"""One process of the concurrency test: random writes, appends, reads, renames, deletes and listings
in shared folders of a mount, for a while. Run as a script (standard library only, quick to start):

    python worker.py ROOT SEED SECONDS FOLDER [FOLDER ...]

Prints one JSON line: {"ops": n, "errors": {"ENOENT": n, ...}}. Errors are expected (other workers
rename and delete the same names); the test decides which errnos are acceptable.
"""

from __future__ import annotations

import errno
import json
import os
import random
import sys
import time
from collections import Counter


def main() -> None:
    root, seed, seconds, folders = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
    rng = random.Random(seed)
    names = [f"n{i}.bin" for i in range(8)]
    ops, errors = 0, Counter()

    def path() -> str:
        return os.path.join(root, rng.choice(folders), rng.choice(names))

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        r = rng.random()
        try:
            if r < 0.30:
                data = rng.randbytes(rng.randrange(1, 150_000))
                fd = os.open(path(), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    os.write(fd, data)
                    if rng.random() < 0.2:
                        os.fsync(fd)
                finally:
                    os.close(fd)
            elif r < 0.40:
                fd = os.open(path(), os.O_WRONLY | os.O_APPEND)
                try:
                    os.write(fd, rng.randbytes(rng.randrange(1, 5000)))
                finally:
                    os.close(fd)
            elif r < 0.65:
                with open(path(), "rb") as f:
                    f.read()
            elif r < 0.85:
                os.rename(path(), path())
            elif r < 0.92:
                os.unlink(path())
            else:
                os.listdir(os.path.join(root, rng.choice(folders)))
        except OSError as e:
            errors[errno.errorcode.get(e.errno, str(e.errno))] += 1
        ops += 1
        if rng.random() < 0.1:
            time.sleep(rng.uniform(0, 0.05))
    print(json.dumps({"ops": ops, "errors": dict(errors)}))


if __name__ == "__main__":
    main()
