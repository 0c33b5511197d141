"""Write everywhere: the root, /etc, our own code, the data dir, the venv; then /tmp."""

import os
import sys


def handler(event, ctx):
    name = event["name"]
    targets = [
        f"/{name}",
        f"/etc/{name}",
        f"/var/tmp/{name}",
        os.path.join(os.getcwd(), name),
        os.path.join(event["data_dir"], name),
        os.path.join(sys.prefix, name),
        os.path.join(os.path.expanduser("~"), name),
    ]
    outside = {}
    for path in targets:
        try:
            with open(path, "w") as fh:
                fh.write("pwned")
            outside[path] = "written"
        except OSError as exc:
            outside[path] = type(exc).__name__
    with open(f"/tmp/{name}", "w") as fh:
        fh.write("private")
    with open(f"/tmp/{name}") as fh:
        tmp = fh.read()
    return {"outside": outside, "tmp": tmp, "tmp_listing": sorted(os.listdir("/tmp"))}
