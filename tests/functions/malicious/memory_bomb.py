"""Ask for 10 GB at once."""


def handler(event, ctx):
    block = bytearray(10 * 1024**3)
    return len(block)
