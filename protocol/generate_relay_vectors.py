#!/usr/bin/env python3
"""Generate the community relay's schema and test vectors (SPEC.md §14).

Writes ``protocol/relay-messages.json`` (every control message with its fields and limits,
the join statuses and refusal reasons) and ``protocol/vectors/relay.json`` (each control
message encoded, and a session preamble). Run once when the relay protocol changes on
purpose (``.venv/bin/python protocol/generate_relay_vectors.py``), review the diff, commit
it; the tests only recompute and compare. Inputs come from the same ``seed(label, n)`` as
``generate_vectors.py``, so the files are the same on every machine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generate_vectors import OUT, _jsonable, seed

from commonsync.formats.identity import DeviceIdentity
from commonsync.relay import wire as relaywire
from commonsync.relay.wire import RefuseReason


def relay_vectors() -> dict[str, Any]:
    requester = DeviceIdentity.from_seed(seed("relay requester", 32)).device_id
    target = DeviceIdentity.from_seed(seed("relay target", 32)).device_id
    token = seed("relay token", relaywire.TOKEN_SIZE)
    examples: list[relaywire.RelayMessage] = [
        relaywire.Connect(1, target.digest),
        relaywire.Granted(1, token),
        relaywire.Refused(2, int(RefuseReason.OFFLINE), RefuseReason.OFFLINE.text),
        relaywire.Refused(0, int(RefuseReason.PROTOCOL_ERROR), "unknown relay message type 99"),
        relaywire.Invitation(requester.digest, token),
        relaywire.Ping(4242),
        relaywire.Pong(4242),
        relaywire.ClaimCode(5),
        relaywire.CodeClaimed(5, 7),
        relaywire.ReleaseCode(7),
        relaywire.ConnectCode(6, 7),
        relaywire.Refused(6, int(RefuseReason.UNKNOWN_CODE), RefuseReason.UNKNOWN_CODE.text),
        relaywire.Vouch(8, False, [requester.digest]),
        relaywire.Vouch(8, True, [target.digest]),
        relaywire.Vouched(8, 2),
        relaywire.Refused(9, int(RefuseReason.NOT_DELEGATE), RefuseReason.NOT_DELEGATE.text),
    ]
    return {
        "description": (
            "the community relay (SPEC.md §14): control messages as encoded inside the "
            "control channel (see protocol/relay-messages.json for the schema), and the "
            "preamble of a session connection"
        ),
        "requester_device_id": str(requester),
        "target_device_id": str(target),
        "cases": [
            {
                "name": type(m).__name__,
                "fields": {f.name: _jsonable(getattr(m, f.name)) for f in m.FIELDS},
                "encoded": relaywire.encode(m).hex(),
            }
            for m in examples
        ],
        "session": {
            "token": token.hex(),
            "preamble": relaywire.preamble(token).hex(),
            "joined": bytes([relaywire.JoinStatus.JOINED]).hex(),
        },
    }


def main() -> None:
    OUT.mkdir(exist_ok=True)
    schema = OUT.parent / "relay-messages.json"
    schema.write_text(json.dumps(relaywire.schema_as_json(), indent=1) + "\n")
    print(f"wrote {schema}")
    vectors = OUT / "relay.json"
    vectors.write_text(json.dumps(relay_vectors(), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {vectors}")


if __name__ == "__main__":
    main()
