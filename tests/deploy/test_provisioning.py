"""Provisioning without a running SuperLink: files, modes, certificates, kit isolation."""

from __future__ import annotations

import ipaddress
import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from oralfed.cli.main import main
from oralfed.deploy.errors import ProvisioningError
from oralfed.deploy.federation_dir import FederationConfig, FederationPaths
from oralfed.deploy.pki import ssh_key_fingerprint
from oralfed.deploy.provisioning import add_clinic, init_federation, list_clinics, remove_clinic
from oralfed.schemas.errors import ExitCode

PORT = 1  # nothing listens there: registration stays pending


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def federation(tmp_path: Path) -> Path:
    out = tmp_path / "fed"
    init_federation("test-fed", out, ["coordinator.example.org", "localhost"], ["127.0.0.1"], PORT)
    return out


def test_ca_and_server_keys_are_private_and_certificates_public(federation: Path) -> None:
    paths = FederationPaths(federation)
    assert mode(paths.ca_key) == 0o600 and mode(paths.server_key) == 0o600
    assert mode(paths.ca_cert) == 0o644 and mode(paths.server_cert) == 0o644
    assert mode(paths.ca_key.parent) == 0o700


def test_server_certificate_has_dns_and_ip_sans_and_is_signed_by_the_ca(federation: Path) -> None:
    paths = FederationPaths(federation)
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["coordinator.example.org", "localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_default_sans_cover_localhost_and_loopback(tmp_path: Path) -> None:
    init_federation("f", tmp_path / "fed", port=PORT)
    server = x509.load_pem_x509_certificate(
        FederationPaths(tmp_path / "fed").server_cert.read_bytes()
    )
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]


def test_flwr_connection_uses_tls_with_the_federation_ca(federation: Path) -> None:
    text = (federation / "flwr-home" / "config.toml").read_text()
    assert 'address = "coordinator.example.org:1"' in text
    assert str(FederationPaths(federation).ca_cert.resolve()) in text
    assert "insecure" not in text


def test_kit_holds_its_own_key_pair_and_nothing_of_anyone_else(federation: Path) -> None:
    first = add_clinic(federation, "clinic-a")
    add_clinic(federation, "clinic-b", dataset_id="b-2024")
    paths = FederationPaths(federation)
    kit = paths.kit("clinic-a")
    assert sorted(p.name for p in kit.iterdir()) == [
        "README.md",
        "ca.crt",
        "clinic.json",
        "node.key",
        "node.key.pub",
    ]
    assert mode(kit / "node.key") == 0o600 and mode(kit / "node.key.pub") == 0o644
    key = serialization.load_ssh_private_key((kit / "node.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    public = (kit / "node.key.pub").read_bytes()
    assert ssh_key_fingerprint(public) == first.fingerprint
    assert (kit / "ca.crt").read_bytes() == paths.ca_cert.read_bytes()
    # Nothing secret of the federation or of clinic-b is in clinic-a's kit.
    secrets = [
        paths.ca_key.read_bytes(),
        paths.server_key.read_bytes(),
        (paths.kit("clinic-b") / "node.key").read_bytes(),
        (paths.kit("clinic-b") / "node.key.pub").read_bytes().split()[1],
    ]
    for file in kit.iterdir():
        content = file.read_bytes()
        assert not any(secret in content for secret in secrets), file
        assert b"clinic-b" not in content
    config = json.loads((kit / "clinic.json").read_text())
    assert config["clinic_id"] == "clinic-a" and config["dataset_id"] == "clinic-a"
    assert config["superlink"] == "coordinator.example.org:1"
    assert json.loads((paths.kit("clinic-b") / "clinic.json").read_text())["dataset_id"] == "b-2024"
    assert "oralfed clinic start --kit" in (kit / "README.md").read_text()


def test_coordinator_keeps_public_keys_only(federation: Path) -> None:
    add_clinic(federation, "clinic-a")
    registered = FederationPaths(federation).public_key("clinic-a")
    assert registered.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert b"PRIVATE" not in (federation / "federation.json").read_bytes()


def test_clinics_are_pending_until_a_superlink_runs_and_listed(federation: Path) -> None:
    add_clinic(federation, "clinic-a")
    add_clinic(federation, "clinic-b")
    entries = list_clinics(federation)
    assert [e.name for e in entries] == ["clinic-a", "clinic-b"]
    assert {e.status for e in entries} == {"pending"}
    assert all(e.fingerprint.startswith("SHA256:") for e in entries)
    assert entries[0].fingerprint != entries[1].fingerprint


def test_a_pending_clinic_can_be_removed_and_reissued_with_a_new_key(federation: Path) -> None:
    old = add_clinic(federation, "clinic-a")
    removed = remove_clinic(federation, "clinic-a")
    assert removed.status == "removed" and removed.removed
    assert not FederationPaths(federation).public_key("clinic-a").exists()
    new = add_clinic(federation, "clinic-a")
    assert new.fingerprint != old.fingerprint and new.status == "pending"


def test_registered_clinic_cannot_be_removed_while_the_superlink_is_down(
    federation: Path,
) -> None:
    add_clinic(federation, "clinic-a")
    config = FederationConfig.load(federation)
    config.clinics["clinic-a"].status, config.clinics["clinic-a"].node_id = "registered", 7
    config.save(federation)
    with pytest.raises(ProvisioningError, match="not running"):
        remove_clinic(federation, "clinic-a")
    assert FederationConfig.load(federation).clinics["clinic-a"].status == "registered"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda d: add_clinic(d, "clinic a"), "clinic name"),
        (lambda d: add_clinic(d.parent / "nowhere", "x"), "not a federation folder"),
        (lambda d: remove_clinic(d, "ghost"), "not an active member"),
        (lambda d: init_federation("again", d), "already holds files"),
        (lambda d: init_federation("x", d.parent / "f2", ip_addresses=["300.1.1.1"]), "300.1.1.1"),
    ],
)
def test_bad_requests_are_refused_with_a_clear_message(
    federation: Path, call: object, message: str
) -> None:
    with pytest.raises(ProvisioningError, match=message):
        call(federation)  # type: ignore[operator]


def test_duplicate_clinic_is_refused(federation: Path) -> None:
    add_clinic(federation, "clinic-a")
    with pytest.raises(ProvisioningError, match="already in federation"):
        add_clinic(federation, "clinic-a")


def run_cli(capsys: pytest.CaptureFixture[str], *arguments: str) -> tuple[int, str]:
    """The ``oralfed`` entry point in-process: its exit code and what it wrote to stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(arguments))
    return int(exit_info.value.code or 0), capsys.readouterr().err


def test_cli_provisioning_errors_have_no_traceback_and_exit_with_the_deployment_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_cli(capsys, "deploy", "add-clinic", "x", "-f", str(tmp_path))
    assert code == ExitCode.DEPLOYMENT
    assert "not a federation folder" in err and "Traceback" not in err


def test_cli_init_add_list_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fed = tmp_path / "fed"
    assert run_cli(capsys, "deploy", "init", "--federation", "f", "--out", str(fed))[0] == 0
    assert run_cli(capsys, "deploy", "add-clinic", "clinic-a", "-f", str(fed))[0] == 0
    code, _ = run_cli(capsys, "deploy", "list", "-f", str(fed), "--json")
    assert code == 0
    assert [e.name for e in list_clinics(fed)] == ["clinic-a"]


def test_server_refuses_insecure_without_dev(
    federation: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_cli(capsys, "server", "start", "-f", str(federation), "--insecure")
    assert code == ExitCode.USAGE and "--dev" in err


def test_server_refuses_an_unreachable_coordinator_database(
    federation: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "postgresql+psycopg://nobody@127.0.0.1:1/oralfed"
    code, err = run_cli(capsys, "server", "start", "-f", str(federation), "--coordinator-url", url)
    assert code == ExitCode.USAGE and "--coordinator-url" in err and "Traceback" not in err
