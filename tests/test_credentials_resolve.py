"""credentials.resolve: the order of precedence for credentials and base URL, the stored login file's validation
(tests/fixtures/credentials/<case>), the no-credentials line, and what `auth status` describes."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
from login_helpers import ISSUER, Clock, apikey_document, login_path, oauth_document, write_document

from lamina_batch.credentials import (
    DEFAULT_BASE_URL,
    AuthStatus,
    OAuthSource,
    StaticKeySource,
    describe_credentials,
    read_login_file,
    resolve_credentials,
)
from lamina_batch.errors import ConfigError, CredentialsFileError, MissingApiKeyError

FIXTURES = Path(__file__).parent / "fixtures" / "credentials"
CASES = sorted(p.name for p in FIXTURES.iterdir() if (p / "expected.txt").is_file())
SECRETS = ("lma_env_key", "lma_stored_key", "lma_mcp_at_first", "lma_mcp_rt_first")


def _expected(case: str) -> tuple[str, list[str]]:
    lines = (FIXTURES / case / "expected.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "exit: 2"
    return lines[1].removeprefix("type: "), [line for line in lines[2:] if line]


def _home_with_case(case: str, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    login_path(home).parent.mkdir(parents=True)
    shutil.copy(FIXTURES / case / "config.json", login_path(home))
    return home


# ---------------------------------------------------------------------- order of precedence


def test_emulator_wins_over_key_and_stored_login(tmp_path: Path) -> None:
    """--emulator beats LAMINA_API_KEY and the stored login; its base URL is the emulator's."""
    write_document(tmp_path, oauth_document())
    env = {"LAMINA_API_KEY": "lma_env_key", "LAMINA_BASE_URL": "https://env.example.test", "HOME": str(tmp_path)}
    source = resolve_credentials(env=env, emulator=("http://127.0.0.1:9", "lma_emulator"))
    assert isinstance(source, StaticKeySource)
    assert source.base_url == "http://127.0.0.1:9"
    status = source.describe()
    assert (status.source, status.origin, status.base_url_from) == ("emulator", "emulator", "--emulator")


def test_env_key_beats_stored_login_and_its_base_url(tmp_path: Path) -> None:
    """LAMINA_API_KEY wins over a stored login, and the stored baseUrl does not apply to it (the default does)."""
    write_document(tmp_path, oauth_document(base_url="https://stored.example.test"))
    source = resolve_credentials(env={"LAMINA_API_KEY": " lma_env_key "}, home=tmp_path)
    assert isinstance(source, StaticKeySource)
    assert asyncio.run(source.authorization()) == "Bearer lma_env_key"
    assert source.base_url == DEFAULT_BASE_URL
    assert source.describe().base_url_from == "the default"


def test_env_key_takes_env_base_url(tmp_path: Path) -> None:
    """With LAMINA_API_KEY, LAMINA_BASE_URL is the base URL (trailing slash dropped)."""
    env = {"LAMINA_API_KEY": "lma_env_key", "LAMINA_BASE_URL": "http://127.0.0.1:8123/"}
    source = resolve_credentials(env=env, home=tmp_path)
    assert source.base_url == "http://127.0.0.1:8123"
    assert source.describe().base_url_from == "LAMINA_BASE_URL"


@pytest.mark.parametrize("case", ["not_json", "not_utf8", "top_level_array", "unreadable"])
def test_env_key_wins_without_reading_a_bad_file(case: str, tmp_path: Path) -> None:
    """A malformed or unreadable stored login does not matter when LAMINA_API_KEY is set."""
    if case == "unreadable":
        login_path(tmp_path).mkdir(parents=True)  # a directory where the file should be: reading it fails
    else:
        _home_with_case(case, tmp_path)
    source = resolve_credentials(env={"LAMINA_API_KEY": "lma_env_key", "HOME": str(tmp_path / "home")})
    assert source.describe().source == "environment"


def test_stored_apikey_login_with_its_base_url(tmp_path: Path) -> None:
    """With no LAMINA_* variables, a stored `apikey` login is used with its own baseUrl; HOME comes from env."""
    write_document(tmp_path, apikey_document())
    source = resolve_credentials(env={"HOME": str(tmp_path)})
    assert isinstance(source, StaticKeySource)
    assert asyncio.run(source.authorization()) == "Bearer lma_stored_key"
    assert asyncio.run(source.unauthorized("Bearer lma_stored_key")) is False
    assert source.base_url == "https://stored.example.test"
    status = source.describe()
    assert (status.source, status.kind, status.file) == ("stored login", "apikey", login_path(tmp_path))
    assert status.base_url_from == "the stored login"


def test_env_base_url_beats_stored_base_url(tmp_path: Path) -> None:
    """LAMINA_BASE_URL beats the stored login's baseUrl when the stored login is the credential."""
    write_document(tmp_path, oauth_document())
    source = resolve_credentials(env={"LAMINA_BASE_URL": "http://127.0.0.1:8123"}, home=tmp_path)
    assert isinstance(source, OAuthSource)
    assert source.base_url == "http://127.0.0.1:8123"
    assert source.describe().base_url_from == "LAMINA_BASE_URL"


def test_blank_env_key_falls_through_to_stored_login(tmp_path: Path) -> None:
    """An empty or whitespace LAMINA_API_KEY counts as unset."""
    write_document(tmp_path, oauth_document())
    source = resolve_credentials(env={"LAMINA_API_KEY": "  "}, home=tmp_path)
    assert isinstance(source, OAuthSource)
    assert source.base_url == ISSUER


def test_no_credentials_is_one_line_naming_both_ways_in(tmp_path: Path) -> None:
    """No key and no stored login: MissingApiKeyError, one line naming LAMINA_API_KEY and `lamina login`."""
    with pytest.raises(MissingApiKeyError) as info:
        resolve_credentials(env={}, home=tmp_path)
    text = str(info.value)
    assert "\n" not in text
    assert "LAMINA_API_KEY" in text
    assert "`lamina login`" in text


def test_malformed_env_values_are_refused_without_echo(tmp_path: Path) -> None:
    """A key with spaces and a non-http LAMINA_BASE_URL are config errors that never echo the value."""
    with pytest.raises(MissingApiKeyError, match="malformed") as key_info:
        resolve_credentials(env={"LAMINA_API_KEY": "lma_a b"}, home=tmp_path)
    assert "lma_a b" not in str(key_info.value)
    env = {"LAMINA_API_KEY": "lma_env_key", "LAMINA_BASE_URL": "ftp://user:hunter2@example.test"}
    with pytest.raises(ConfigError, match="LAMINA_BASE_URL must be an http") as url_info:
        resolve_credentials(env=env, home=tmp_path)
    assert "hunter2" not in str(url_info.value)


# ---------------------------------------------------------------------- the file


@pytest.mark.parametrize("case", CASES)
def test_bad_stored_login_files(case: str, tmp_path: Path) -> None:
    """Each fixture file is one clear line naming the file and what is wrong (or why it holds no login)."""
    kind, substrings = _expected(case)
    home = _home_with_case(case, tmp_path)
    with pytest.raises(ConfigError) as info:
        resolve_credentials(env={}, home=home)
    assert type(info.value).__name__ == kind
    text = str(info.value)
    assert "\n" not in text
    assert str(login_path(home)) in text
    for s in substrings:
        assert s in text, f"{case}: {s!r} not in {text!r}"
    for secret in ("lma_abc", "lma_mcp_at_x", "lma_mcp_rt_x"):
        assert secret not in text


def test_unreadable_file_is_one_line(tmp_path: Path) -> None:
    """A stored login that cannot be read is a CredentialsFileError naming the file and the reason."""
    login_path(tmp_path).mkdir(parents=True)
    with pytest.raises(CredentialsFileError) as info:
        resolve_credentials(env={}, home=tmp_path)
    assert str(info.value).startswith(f"{login_path(tmp_path)}: cannot read the stored Lamina login (")
    assert "lamina login" in str(info.value)


def test_parsed_login_fields_and_unknown_keys_ignored(tmp_path: Path) -> None:
    """The file's fields become a StoredLogin (times parsed, lifetime from savedAt to expiresAt); extras ignored."""
    doc = oauth_document(saved_at=1_800_000_000.0, lifetime=600)
    doc["credentials"]["futureField"] = {"x": 1}
    doc["somethingNew"] = [1, 2]
    write_document(tmp_path, doc)
    login = read_login_file(login_path(tmp_path)).login
    assert login is not None
    assert (login.kind, login.base_url, login.client_id, login.refreshable) == ("oauth", ISSUER, "lamina-cli", True)
    assert login.lifetime == pytest.approx(600)
    assert "lma_mcp" not in repr(login)


def test_unparseable_expiry_is_unknown_not_fatal(tmp_path: Path) -> None:
    """An expiresAt that is not a date leaves the expiry unknown (refreshed on a 401), as Lamina's CLI does."""
    doc = oauth_document()
    doc["credentials"]["expiresAt"] = "soon"
    write_document(tmp_path, doc)
    status = describe_credentials(env={}, home=tmp_path)
    assert status.usable
    assert status.expires_at is None
    assert any("unknown (refreshed when the server refuses it)" in line for line in status.lines())


# ---------------------------------------------------------------------- auth status


def test_status_of_a_fresh_oauth_login(tmp_path: Path) -> None:
    """A refreshable login with an hour left: usable, no refresh needed, expiry shown, no token anywhere."""
    clock = Clock(1_800_000_000.0)
    write_document(tmp_path, oauth_document(saved_at=clock.now, lifetime=3600))
    status = describe_credentials(env={}, home=tmp_path, clock=clock)
    assert status.usable
    assert (status.source, status.kind, status.refreshable, status.refresh_needed) == (
        "stored login",
        "oauth",
        True,
        False,
    )
    assert status.origin == ISSUER
    assert status.seconds_left == pytest.approx(3600)
    text = "\n".join(status.lines()) + repr(status)
    assert "in 60 min; no refresh needed" in text
    for secret in SECRETS:
        assert secret not in text


def test_status_of_a_due_and_of_a_dead_login(tmp_path: Path) -> None:
    """Within the margin a refresh is due (still usable); expired with no refresh token is not usable."""
    clock = Clock(1_800_000_000.0)
    write_document(tmp_path, oauth_document(saved_at=clock.now - 3590, lifetime=3600))
    due = describe_credentials(env={}, home=tmp_path, clock=clock)
    assert due.usable
    assert due.refresh_needed
    write_document(tmp_path, oauth_document(saved_at=clock.now - 7200, lifetime=3600, refresh=None))
    dead = describe_credentials(env={}, home=tmp_path, clock=clock)
    assert not dead.usable
    assert "lamina login" in (dead.problem or "")
    assert any("60 min ago" in line for line in dead.lines())


def test_status_without_credentials(tmp_path: Path) -> None:
    """No credentials: not usable, with the one line saying how to get some."""
    status = describe_credentials(env={}, home=tmp_path)
    assert status == AuthStatus(usable=False, problem=status.problem)
    assert "lamina login" in (status.problem or "")
    assert status.lines()[0].startswith("credentials: none usable (")


def test_status_of_environment_key(tmp_path: Path) -> None:
    """LAMINA_API_KEY: source environment, kind apikey, origin of the base URL with userinfo dropped."""
    env = {"LAMINA_API_KEY": "lma_env_key", "LAMINA_BASE_URL": "https://u:pw@api.example.test:8443/x"}
    status = describe_credentials(env=env, home=tmp_path)
    assert status.usable
    assert status.origin == "https://api.example.test:8443"
    text = json.dumps(status.lines())
    assert "pw" not in text
    assert "lma_env_key" not in text
