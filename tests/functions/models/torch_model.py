"""A torch.nn.Linear loaded twice: from a state_dict and from a TorchScript archive."""

import torch

import cumulo
from cumulo.ai.formats import load_torch


@cumulo.model(name="torch-linear", batch_wait_ms=20)
class TorchLinear:
    def load(self) -> None:
        self.from_state = load_torch("linear_state.pt", torch.nn.Linear(3, 2), threads=1)
        self.scripted = load_torch("linear_script.pt")

    def predict(self, batch: list) -> list:
        x = torch.tensor(batch, dtype=torch.float32)
        with torch.inference_mode():
            a, b = self.from_state(x), self.scripted(x)
        return [[ra, rb] for ra, rb in zip(a.tolist(), b.tolist(), strict=True)]
