"""Answer at once, leave a thread spinning: CPU after the response, unbilled."""

import threading

import cumulo


def spin() -> None:
    while True:
        pass


@cumulo.function(max_instances=1)
def spin_after_return(event, ctx):
    threading.Thread(target=spin, daemon=True).start()
    return {"returned": True}
