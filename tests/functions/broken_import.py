import cumulo

CONFIG = {"retries": 3}


def load_settings():
    return CONFIG["missing_setting"]


SETTINGS = load_settings()


@cumulo.function
def broken(event, ctx):
    return event
