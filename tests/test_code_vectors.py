"""The short join code vectors (protocol/vectors/join-codes.json, protocol/code-words.txt):
this implementation reproduces them, and so does SPEC.md §15.10's description of the PAKE
computed with libsodium's Ed25519 arithmetic and hashlib alone, so that the spec, not only
the ``spake2`` package, is what the vectors pin."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Any

import pytest
from nacl.bindings import (
    crypto_core_ed25519_add,
    crypto_core_ed25519_is_valid_point,
    crypto_core_ed25519_sub,
    crypto_scalarmult_ed25519_base_noclamp,
    crypto_scalarmult_ed25519_noclamp,
)

from commonsync.formats.messages import CodeAnswer
from commonsync.membership import codes
from commonsync.node.joining import CodeStatus

from .vectors import PROTOCOL, load

VECTORS = load("join-codes.json")
#: The order of Ed25519's prime-order subgroup.
L = 2**252 + 27742317777372353535851937790883648493


def _entropy(hex_bytes: str) -> Callable[[int], bytes]:
    """What a side draws its scalar from: the vector's bytes, asked for whole and once."""
    left = [bytes.fromhex(hex_bytes)]

    def draw(n: int) -> bytes:
        assert left, "the PAKE drew entropy twice"
        assert n == len(left[0]), f"the PAKE asked for {n} bytes"
        return left.pop()

    return draw


def _hkdf_sha256(ikm: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 with an empty salt (a key of 32 zero bytes)."""
    prk = hmac.digest(bytes(32), ikm, "sha256")
    out, block = b"", b""
    for counter in range(1, -(-length // 32) + 1):
        block = hmac.digest(prk, block + info + bytes([counter]), "sha256")
        out += block
    return out[:length]


def _le(number: int) -> bytes:
    return number.to_bytes(32, "little")


def test_the_word_file_is_the_code_s_list() -> None:
    data = (PROTOCOL / VECTORS["words_file"]).read_bytes()
    assert hashlib.blake2b(data, digest_size=32).hexdigest() == VECTORS["words_file_blake2b"]
    assert data.endswith(b"\n")
    lines = data.decode("ascii").split("\n")[:-1]
    assert tuple(lines) == codes.WORDS
    assert len(lines) == VECTORS["words_count"] == 256
    assert all(w.isascii() and w.isalpha() and w == w.lower() for w in lines)


def test_the_constants_are_the_code_s() -> None:
    assert VECTORS["max_nameplate"] == codes.MAX_NAMEPLATE
    assert VECTORS["max_failures"] == codes.MAX_FAILURES
    assert VECTORS["pake_id"].encode() == codes.PAKE_ID
    from spake2.parameters.ed25519 import ParamsEd25519  # type: ignore[import-untyped]

    assert ParamsEd25519.S.to_bytes().hex() == VECTORS["spake2_s"]


@pytest.mark.parametrize("case", VECTORS["parse"], ids=lambda c: repr(c["text"]))
def test_a_code_text_reads_as_the_vector_says(case: dict[str, Any]) -> None:
    code = codes.JoinCode.parse(case["text"])
    assert str(code) == case["code"]
    assert code.nameplate == case["nameplate"]
    assert list(code.words) == case["words"]
    assert [codes.WORDS.index(w) for w in code.words] == case["word_indexes"]
    assert codes.JoinCode.parse(case["code"]) == code  # the canonical text reads back


@pytest.mark.parametrize("case", VECTORS["refuse"], ids=lambda c: c["reason"])
def test_a_code_text_is_refused(case: dict[str, str]) -> None:
    with pytest.raises(codes.CodeError):
        codes.JoinCode.parse(case["text"])


@pytest.mark.parametrize("run", VECTORS["runs"], ids=lambda r: r["label"])
def test_a_pake_run_gives_the_vector_s_messages_keys_and_proofs(run: dict[str, Any]) -> None:
    handshake_hash = bytes.fromhex(run["handshake_hash"])
    sides = {}
    for role in ("joiner", "member"):
        side = run[role]
        code = codes.JoinCode.parse(side["code"])
        assert str(code).encode().hex() == side["password"]
        pake = codes.CodePake(code, entropy=_entropy(side["entropy"]))
        assert pake.message.hex() == side["message"]
        sides[role] = pake
    joiner, member = run["joiner"], run["member"]
    joiner_keys = sides["joiner"].finish(bytes.fromhex(member["message"]), handshake_hash)
    member_keys = sides["member"].finish(bytes.fromhex(joiner["message"]), handshake_hash)
    assert joiner_keys.key.hex() == joiner["key"]
    assert member_keys.key.hex() == member["key"]
    assert joiner_keys.proof("joiner").hex() == joiner["proof"]
    assert member_keys.proof("joiner").hex() == member["expected_joiner_proof"]
    accepted = member_keys.check("joiner", bytes.fromhex(joiner["proof"]))
    assert accepted is run["accepted"] is (joiner["code"] == member["code"])
    if accepted:
        assert member_keys.proof("member").hex() == member["proof"]
        assert joiner_keys.check("member", bytes.fromhex(member["proof"]))
    else:
        assert "proof" not in member  # a member sends no proof to a wrong code
        assert joiner_keys.key != member_keys.key


@pytest.mark.parametrize("run", VECTORS["runs"], ids=lambda r: r["label"])
def test_the_spec_s_formulas_give_the_same_run(run: dict[str, Any]) -> None:
    """SPEC.md §15.10 step by step, with libsodium's Ed25519 and hashlib: scalars,
    messages, the shared point, the key's transcript and the proofs."""
    s_point = bytes.fromhex(VECTORS["spake2_s"])
    handshake_hash = bytes.fromhex(run["handshake_hash"])
    messages = {role: bytes.fromhex(run[role]["message"]) for role in ("joiner", "member")}
    for role, peer in (("joiner", "member"), ("member", "joiner")):
        side = run[role]
        password = bytes.fromhex(side["password"])
        pw = int.from_bytes(_hkdf_sha256(password, b"SPAKE2 pw", 48), "big") % L
        assert _le(pw).hex() == side["password_scalar"]
        x = int.from_bytes(bytes.fromhex(side["entropy"]), "big") % L
        assert _le(x).hex() == side["scalar"]
        blinding = crypto_scalarmult_ed25519_noclamp(_le(pw), s_point)
        point = crypto_core_ed25519_add(crypto_scalarmult_ed25519_base_noclamp(_le(x)), blinding)
        assert messages[role] == b"S" + point
        unblinded = crypto_core_ed25519_sub(messages[peer][1:], blinding)
        shared = crypto_scalarmult_ed25519_noclamp(_le(x), unblinded)
        assert shared.hex() == side["shared_point"]
        first, second = sorted([messages[role][1:], messages[peer][1:]])
        transcript = (
            hashlib.sha256(password).digest()
            + hashlib.sha256(VECTORS["pake_id"].encode()).digest()
            + first
            + second
            + shared
        )
        key = hashlib.sha256(transcript).digest()
        assert key.hex() == side["key"]

        def proof(who: str, key: bytes = key) -> str:
            data = VECTORS["proof_context"].encode() + who.encode() + b"\x00" + handshake_hash
            return hashlib.blake2b(data, key=key, digest_size=32).hexdigest()

        if role == "joiner":
            assert proof("joiner") == side["proof"]
        else:
            assert proof("joiner") == side["expected_joiner_proof"]
            assert proof("member") == side.get("proof", proof("member"))
    assert (run["joiner"]["key"] == run["member"]["key"]) is run["accepted"]


@pytest.mark.parametrize("case", VECTORS["refused_messages"], ids=lambda c: c["reason"])
def test_a_malformed_pake_message_is_refused(case: dict[str, str]) -> None:
    right = next(r for r in VECTORS["runs"] if r["label"] == "right")
    member = codes.CodePake(
        codes.JoinCode.parse(right["member"]["code"]), entropy=_entropy(right["member"]["entropy"])
    )
    message = bytes.fromhex(case["message"])
    with pytest.raises(codes.CodeError):
        member.finish(message, bytes.fromhex(right["handshake_hash"]))
    if len(message) == 33 and message[:1] == b"S" and message != member.message:
        # The spec's rule for the point is libsodium's: on the curve, canonical, in the
        # prime-order subgroup and not of small order (the identity included).
        assert not crypto_core_ed25519_is_valid_point(message[1:])


def test_the_message_vectors_cover_every_code_answer() -> None:
    cases = [c for c in load("messages.json")["cases"] if c["name"].startswith("Code")]
    assert {c["name"] for c in cases} == {"CodeHello", "CodeProof", "CodeAnswer"}
    answers = [c["fields"] for c in cases if c["name"] == CodeAnswer.__name__]
    assert sorted(a["status"] for a in answers) == sorted(int(s) for s in CodeStatus)
    for answer in answers:
        proof, link = answer["proof"]["hex"], answer["link"]
        accepted = answer["status"] == CodeStatus.ACCEPTED
        assert (len(proof) == 2 * codes.PROOF_SIZE and link != "") is accepted
        assert (answer["detail"] == "") is accepted
