import numpy as np

import cumulo


@cumulo.function
def norm(event: dict, ctx: cumulo.Context) -> dict:
    return {"norm": float(np.linalg.norm(np.array(event.get("v", [3, 4]))))}
