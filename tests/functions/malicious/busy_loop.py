"""Never return, never sleep."""


def handler(event, ctx):
    n = 0
    while True:
        n += 1
