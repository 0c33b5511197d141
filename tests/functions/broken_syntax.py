import cumulo


@cumulo.function
def broken(event, ctx)
    return event
