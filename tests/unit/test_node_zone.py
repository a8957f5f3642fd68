"""The node's zone, for topology hints: asked again while the API cannot answer, given up
only when the API refuses."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from kubernetes.aio import client

from nfqproxy.sources.kubernetes import ZONE_LABEL, Backoff, node_zone


class Response:
    def __init__(self, status: int, body: bytes = b"") -> None:
        self.status, self.body = status, body

    async def read(self) -> bytes:
        return self.body

    def release(self) -> None:
        pass


def zone_after(answers: list[Any], monkeypatch: pytest.MonkeyPatch) -> str | None:
    """node_zone's answer when the API answers each request with the next of answers (a
    Response, or an exception raised instead)."""

    class CoreV1Api:
        def __init__(self, api: object) -> None:
            pass

        async def read_node_without_preload_content(self, name: str) -> Response:
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            assert isinstance(answer, Response)
            return answer

    monkeypatch.setattr(client, "CoreV1Api", CoreV1Api)
    zone = asyncio.run(node_zone(object(), "node-a", Backoff(initial=0.001, maximum=0.001)))
    assert answers == [], "asked more often than needed"
    return zone


def node(labels: dict[str, str]) -> Response:
    return Response(200, json.dumps({"metadata": {"name": "node-a", "labels": labels}}).encode())


def test_an_unreachable_or_failing_api_is_asked_again_until_it_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers = [
        ConnectionRefusedError("down"),
        Response(503),
        Response(429),
        node({ZONE_LABEL: "a"}),
    ]
    assert zone_after(answers, monkeypatch) == "a"


@pytest.mark.parametrize(
    "answer",
    [Response(404), Response(403), node({}), Response(200, b"not json")],
    ids=["no such node", "forbidden", "no zone label", "garbage"],
)
def test_a_refusal_or_a_node_without_a_zone_turns_hints_off_at_once(
    answer: Response, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert zone_after([answer], monkeypatch) is None
