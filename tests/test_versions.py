"""Versions, traffic splits, rollback, removal — and the deploy pipeline's bad inputs."""

from __future__ import annotations

from collections import Counter

import pytest

from cumulo.client import Client
from cumulo.errors import BadRequest, Conflict, NotFound
from tests.conftest import FUNCTIONS, RunningPlatform

KIT = FUNCTIONS / "kit.py"


def test_every_deploy_is_a_new_immutable_version(client: Client, unique_name: str) -> None:
    client.deploy(KIT, name=unique_name, handler="kit.whoami")
    second = client.deploy(KIT, name=unique_name, handler="kit.echo")
    assert second["version"] == 2
    versions = client.versions(unique_name)
    assert [v["version"] for v in versions["versions"]] == [1, 2]
    assert [v["handler"] for v in versions["versions"]] == ["kit.whoami", "kit.echo"]
    assert versions["traffic"] == {"2": 100}
    assert versions["versions"][0]["bundle_sha256"] == versions["versions"][1]["bundle_sha256"]


def test_no_promote_leaves_live_where_it_was(client: Client, unique_name: str) -> None:
    client.deploy(KIT, name=unique_name, handler="kit.whoami")
    result = client.deploy(KIT, name=unique_name, handler="kit.echo", promote=False)
    assert result["traffic"] == {"1": 100}
    assert client.invoke(unique_name, {"x": 1})["version"] == "1"


def test_traffic_split_follows_the_weights(platform: RunningPlatform, unique_name: str) -> None:
    client = platform.client()
    client.deploy(KIT, name=unique_name, handler="kit.whoami", max_instances=2)
    client.deploy(KIT, name=unique_name, handler="kit.whoami", max_instances=2, env={"DEPLOY": "2"})
    assert client.set_traffic(unique_name, {1: 80, 2: 20})["traffic"] == {"1": 80, "2": 20}
    seen: Counter[str] = Counter()
    with platform.http() as http:
        for _ in range(600):
            response = http.post(f"/fn/default/{unique_name}", json={})
            seen[response.headers["x-cumulo-version"]] += 1
    # 600 draws at p=0.2: mean 120, sd ~9.8; 60..180 is beyond 6 sd.
    assert 60 <= seen["2"] <= 180
    assert seen["1"] + seen["2"] == 600


def test_rollback_restores_the_previous_split(client: Client, unique_name: str) -> None:
    client.deploy(KIT, name=unique_name, handler="kit.whoami")
    client.deploy(KIT, name=unique_name, handler="kit.whoami", env={"DEPLOY": "2"})
    client.set_traffic(unique_name, {1: 50, 2: 50})
    assert client.rollback(unique_name)["traffic"] == {"2": 100}
    assert client.invoke(unique_name, {})["version"] == "2"
    assert client.rollback(unique_name)["traffic"] == {"1": 100}
    assert client.invoke(unique_name, {})["version"] == "1"
    with pytest.raises(Conflict, match="no earlier traffic split"):
        client.rollback(unique_name)


def test_rm_removes_the_function(client: Client, unique_name: str) -> None:
    client.deploy(KIT, name=unique_name, handler="kit.echo")
    assert client.invoke(unique_name, {"a": 1}) == {"a": 1}
    client.remove(unique_name)
    with pytest.raises(NotFound):
        client.invoke(unique_name, {})
    with pytest.raises(NotFound):
        client.versions(unique_name)
    assert unique_name not in {f["name"] for f in client.functions()}


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({1: 50, 2: 40}, "must sum to 100, not 90"),
        ({1: 100, 7: 0}, "has no version 7"),
        ({1: 150, 2: -50}, "from 0 to 100"),
    ],
)
def test_bad_traffic_is_400(
    client: Client, unique_name: str, weights: dict[int, int], message: str
) -> None:
    client.deploy(KIT, name=unique_name, handler="kit.echo")
    client.deploy(KIT, name=unique_name, handler="kit.echo", env={"DEPLOY": "2"})
    with pytest.raises(BadRequest, match=message):
        client.set_traffic(unique_name, weights)
    assert client.versions(unique_name)["traffic"] == {"2": 100}


def test_syntax_error_is_400_with_the_users_traceback_and_live_untouched(
    client: Client, unique_name: str
) -> None:
    client.deploy(KIT, name=unique_name, handler="kit.echo")
    with pytest.raises(BadRequest) as info:
        client.deploy(FUNCTIONS / "broken_syntax.py", name=unique_name)
    assert info.value.code == "invalid_deploy"
    assert "SyntaxError" in info.value.message
    assert "broken_syntax.py" in info.value.details["traceback"]
    assert "line 5" in info.value.details["traceback"]
    assert client.versions(unique_name)["traffic"] == {"1": 100}
    assert client.invoke(unique_name, {"still": "up"}) == {"still": "up"}


def test_import_error_is_400_with_only_the_users_frames(client: Client, unique_name: str) -> None:
    with pytest.raises(BadRequest, match="KeyError: 'missing_setting'") as info:
        client.deploy(FUNCTIONS / "broken_import.py", name=unique_name)
    tb = info.value.details["traceback"]
    assert "load_settings" in tb
    assert 'CONFIG["missing_setting"]' in tb
    assert "importlib" not in tb
    assert "cumulo/" not in tb


@pytest.mark.parametrize("name", ["Upper", "under_score", "a" * 64, "sp ace", "dots.no"])
def test_invalid_function_name_is_400(client: Client, name: str) -> None:
    with pytest.raises(BadRequest, match="invalid function name"):
        client.deploy(KIT, name=name, handler="kit.echo")


def test_unknown_handler_is_400(client: Client, unique_name: str) -> None:
    with pytest.raises(BadRequest, match="has no attribute 'nope'"):
        client.deploy(KIT, name=unique_name, handler="kit.nope")


def test_ambiguous_module_needs_a_name(client: Client) -> None:
    with pytest.raises(BadRequest, match=r"defines several functions .*echo.*secret"):
        client.deploy(KIT)


def test_name_defaults_to_the_decorated_function(client: Client) -> None:
    result = client.deploy(FUNCTIONS / "numpy_fn.py")
    assert result["function"] == "norm"
    assert client.invoke("norm", {"v": [6, 8]}) == {"norm": 10.0}


def test_bad_limits_are_400(client: Client, unique_name: str) -> None:
    with pytest.raises(BadRequest, match="memory_mb must be an integer"):
        client.deploy(KIT, name=unique_name, handler="kit.echo", memory_mb=1)
    with pytest.raises(BadRequest, match="min_instances must not exceed max_instances"):
        client.deploy(KIT, name=unique_name, handler="kit.echo", min_instances=5, max_instances=2)
    with pytest.raises(BadRequest, match="max_attempts must be an integer from 1 to 100"):
        client.deploy(KIT, name=unique_name, handler="kit.echo", max_attempts=0)
    with pytest.raises(BadRequest, match="invalid rate"):
        client.deploy(KIT, name=unique_name, handler="kit.echo", rate_limit="lots")
