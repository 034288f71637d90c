"""The worker's side of the session channel without a socket: the codec of its leg, and
the secret sources a build's RUN reads (workers/_secrets.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import pytest

from dockyard.scheduler._errors import ServiceError
from dockyard.workers._secrets import ChannelSecrets, DictSecrets, session_channel, session_secrets
from dockyard.workers._session_channel import decode_answer, decode_ask, encode_answer, encode_ask


def test_ask_round_trip() -> None:
    assert decode_ask(encode_ask(7, "secret.get", {"id": "t"})) == (7, "secret.get",
                                                                     {"id": "t"})


ANSWERS = [
    (encode_answer(3, b"v"), (3, b"v", None, "", None)),
    (encode_answer(3, None), (3, None, None, "", None)),
    (encode_answer(4, None, "UsageError", "too big", "smaller"),
     (4, None, "UsageError", "too big", "smaller")),
]


@pytest.mark.parametrize(("data", "answer"), ANSWERS)
def test_answer_round_trip(data: bytes, answer: tuple[Any, ...]) -> None:
    assert decode_answer(data) == answer


def _pack(message: Any) -> bytes:
    packed: bytes = msgpack.packb(message, use_bin_type=True)
    return packed


BAD_ASKS = [
    (b"\xc1", "a session ask that is not msgpack: "),
    (_pack([1]), "a session ask that is not a version-1 map"),
    (_pack({"v": 2, "ask": 1, "what": "x", "params": {}}),
     "a session ask that is not a version-1 map"),
    (_pack({"v": 1, "ask": True, "what": "x", "params": {}}),
     "a session ask without an ask number"),
    (_pack({"v": 1, "ask": 1, "what": 5, "params": {}}),
     "a session ask whose 'what' is no text or 'params' no map"),
]


@pytest.mark.parametrize(("data", "message"), BAD_ASKS)
def test_bad_asks(data: bytes, message: str) -> None:
    with pytest.raises(ServiceError) as caught:
        decode_ask(data)
    assert caught.value.message.startswith(message)


class _Asker:
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.asked: list[tuple[str, dict[str, Any]]] = []

    async def ask(self, what: str, params: dict[str, Any]) -> Any:
        self.asked.append((what, params))
        return self.answer


def test_channel_secrets_ask_only_for_ids_the_request_named() -> None:
    asker = _Asker(b"value")
    source = ChannelSecrets(asker, ["token"])
    assert asyncio.run(source.secret("token")) == b"value"
    assert asyncio.run(source.secret("other")) is None
    assert asker.asked == [("secret.get", {"id": "token"})]
    assert "value" not in repr(source)


def test_channel_secrets_refuse_an_answer_that_is_not_bytes() -> None:
    with pytest.raises(ServiceError, match="answered secret 'token' with a str, not bytes"):
        asyncio.run(ChannelSecrets(_Asker("text"), ["token"]).secret("token"))


def test_dict_secrets() -> None:
    source = DictSecrets({"a": b"1"})
    assert asyncio.run(source.secret("a")) == b"1"
    assert asyncio.run(source.secret("b")) is None
    assert "1" not in repr(source).replace("ids=", "")


def test_session_secrets_from_a_request_session_map() -> None:
    session = {"url": "unix:///s.sock", "id": "b1", "token": "t", "secret_ids": ["a"],
               "ssh": {}}
    channel = session_channel(session)
    source = session_secrets(session, channel)
    assert isinstance(source, ChannelSecrets) and source.ids == {"a"}
    assert channel is not None and (channel.url, channel.session_id) == ("unix:///s.sock", "b1")
    assert "'t'" not in repr(channel)
    assert session_channel({"ssh": {}}) is None
    assert isinstance(session_secrets({"secret_ids": ["a"]}, None), DictSecrets)
