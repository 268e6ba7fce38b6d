"""Security: where the API key goes, who may start a session in ``workbench serve``, the emulator's certificate.

- The key: ``GEMINI_API_KEY`` goes only to Google's endpoint; a real session against the embedded emulator with it
  set in the environment sends no key (the emulator logs whether a key came, never the key), and a key the user
  names with ``--api-key-env`` is sent.
- ``POST /offer``: real HTTP requests (aiohttp's client) to a running ``workbench serve`` server; only JSON from
  the page's own origin gets through, every other request is refused with 403 and starts nothing.
- The emulator's certificate: private key 0600, a server leaf that is no CA (so trusting it cannot make a client
  accept a certificate it signed), still verified by Python's ssl (what the SDK uses) as its own trust anchor;
  its temporary directory goes when ``workbench emulator`` gets SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import soundfile as sf
from aiortc import RTCPeerConnection, RTCSessionDescription
from conftest import REPO
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from workbench.emulator.certs import make_cert, server_context
from workbench.io import live
from workbench.io.media import FilePlayerTrack
from workbench.io.webrtc import patch_aioice_loopback
from workbench.ui import cli
from workbench.ui.web.server import ServeConfig, Server

SECRET = "AIza-test-secret-that-must-not-leak"


# -- the API key -----------------------------------------------------------------------------------------------


def test_make_client_sends_gemini_api_key_to_google_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    assert live.api_key_for(live.LiveSettings()) == SECRET  # Google's endpoint
    assert live.api_key_for(live.LiveSettings(base_url="https://127.0.0.1:9443")) is None
    assert live.api_key_for(live.LiveSettings(base_url="https://127.0.0.1:9443", api_key="named")) == "named"
    monkeypatch.delenv("GEMINI_API_KEY")
    with pytest.raises(ValueError, match="GEMINI_API_KEY"):
        live.make_client(live.LiveSettings())


def _run(tmp: Path, name: str, *extra: str) -> list[dict]:
    wav = tmp / "tone.wav"
    if not wav.exists():
        t = np.arange(48_000) / 48_000
        sf.write(wav, (np.sin(2 * np.pi * 300 * t) * 8000).astype(np.int16), 48_000)
    out = tmp / name
    assert cli.main(["run", "--audio", str(wav), "--out", str(out), "--no-greeting", "-q", *extra]) == 0
    # nothing the session wrote holds the key
    assert not any(SECRET in p.read_text(errors="replace") for p in out.iterdir() if p.suffix in (".json", ".jsonl"))
    return [json.loads(line) for line in (out / "emulator.jsonl").read_text().splitlines()]


def test_a_session_against_the_emulator_never_receives_gemini_api_key(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    log = _run(tmp_path, "default")
    keys = [e["detail"] for e in log if e["direction"] == "in" and e["kind"] == "api_key"]
    conns = {e["conn"] for e in log}
    assert keys == ["absent"] * len(conns) and keys  # every connection, and none got a key
    # a key the user names is sent (to the endpoint the user chose)
    monkeypatch.setenv("WB_TEST_KEY", "named-key")
    log = _run(tmp_path, "named", "--api-key-env", "WB_TEST_KEY")
    assert [e["detail"] for e in log if e["kind"] == "api_key"][0] == "present"


def test_api_key_env_names_a_variable_that_must_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--out", str(tmp_path / "x"), "--api-key-env", "WB_NO_SUCH_VARIABLE_SET"]) == 2
    assert "WB_NO_SUCH_VARIABLE_SET" in capsys.readouterr().err


# -- POST /offer -----------------------------------------------------------------------------------------------


async def _offer_sdp() -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection()
    pc.addTransceiver(FilePlayerTrack(np.zeros(48_000, np.int16)), direction="sendrecv")
    pc.createDataChannel("events")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


def test_post_offer_takes_only_json_from_the_pages_own_origin(tmp_path: Path) -> None:
    async def run() -> dict[str, int]:
        patch_aioice_loopback()
        server = Server(ServeConfig(out_dir=tmp_path, port=0))
        await server.start()
        own = f"http://127.0.0.1:{server.port}"
        url = f"{own}/offer"
        codes: dict[str, int] = {}
        pc, sdp = await _offer_sdp()
        offer = json.dumps({"sdp": sdp, "type": "offer"})
        try:
            async with aiohttp.ClientSession() as http:
                async def post(name: str, body: str, headers: dict[str, str]) -> dict:
                    async with http.post(url, data=body, headers=headers) as r:
                        codes[name] = r.status
                        return await r.json() if r.status == 200 else {}

                json_type = {"Content-Type": "application/json"}
                await post("text_plain", offer, {"Content-Type": "text/plain", "Origin": own})
                await post("form", offer, {"Content-Type": "application/x-www-form-urlencoded", "Origin": own})
                await post("foreign_origin", offer, {**json_type, "Origin": "http://evil.example"})
                await post("null_origin", offer, {**json_type, "Origin": "null"})
                await post("no_origin", offer, json_type)
                await post("other_port", offer, {**json_type, "Origin": "http://127.0.0.1:1"})
                # DNS rebinding: evil.example resolved to 127.0.0.1, so Origin and Host agree
                rebound = f"evil.example:{server.port}"
                await post("rebinding", offer, {**json_type, "Host": rebound, "Origin": f"http://{rebound}"})
                codes["sessions_after_refusals"] = len(server.sessions)
                await post("own_but_not_an_offer", "{}", {**json_type, "Origin": own})
                local = f"localhost:{server.port}"
                await post("localhost_not_an_offer", "[]", {**json_type, "Host": local, "Origin": f"http://{local}"})
                answer = await post("own", offer, {**json_type, "Origin": own})
                codes["answer_is_sdp"] = int(answer.get("type") == "answer" and "m=audio" in answer.get("sdp", ""))
                await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        finally:
            await server.stop()
            await pc.close()
        return codes

    codes = asyncio.run(run())
    for name in ("text_plain", "form", "foreign_origin", "null_origin", "no_origin", "other_port", "rebinding"):
        assert codes[name] == 403, (name, codes)
    assert codes["sessions_after_refusals"] == 0
    assert codes["own_but_not_an_offer"] == 400 and codes["localhost_not_an_offer"] == 400  # past the guard
    assert codes["own"] == 200 and codes["answer_is_sdp"] == 1


# -- the emulator's certificate ------------------------------------------------------------------------------------


def _leaf_signed_by(issuer_cert: Path, issuer_key: Path, out: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 issued by the emulator's certificate: valid only if that one were a CA."""
    ca = x509.load_pem_x509_certificate(issuer_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(issuer_key.read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "impostor")]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    out.mkdir()
    (out / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM) + issuer_cert.read_bytes())
    (out / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    return out / "cert.pem", out / "key.pem"


async def _handshake(cert: Path, key: Path, trust: Path) -> str:
    """TLS to a server with (cert, key), trusting ``trust`` as the SDK does with SSL_CERT_FILE; "ok" or the error."""
    server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0, ssl=server_context(cert, key))
    port = server.sockets[0].getsockname()[1]
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ssl.create_default_context(cafile=str(trust)))
        writer.close()
        return "ok"
    except ssl.SSLCertVerificationError as exc:
        return exc.verify_message
    finally:
        server.close()


def test_the_emulator_certificate_is_a_server_leaf_with_a_private_key(tmp_path: Path) -> None:
    cert_path, key_path = make_cert()
    try:
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(key_path.parent.stat().st_mode) == 0o700
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        assert usage.digital_signature and not usage.key_cert_sign and not usage.crl_sign
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
        # Python's ssl (the SDK's TLS) takes the self-signed leaf as its own trust anchor ...
        assert asyncio.run(_handshake(cert_path, key_path, trust=cert_path)) == "ok"
        # ... and will not accept a certificate "issued" by it
        other_cert, other_key = _leaf_signed_by(cert_path, key_path, tmp_path / "impostor")
        assert asyncio.run(_handshake(other_cert, other_key, trust=cert_path)) != "ok"
    finally:
        shutil.rmtree(cert_path.parent)
    # a key file that existed with a wider mode is made 0600 too
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "key.pem").write_text("old")
    os.chmod(tmp_path / "mine" / "key.pem", 0o644)
    _, key2 = make_cert(tmp_path / "mine")
    assert stat.S_IMODE(key2.stat().st_mode) == 0o600


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_emulator_removes_its_certificate_directory_on_a_signal(sig: signal.Signals) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "workbench.ui.cli", "emulator", "--port", "0"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout is not None
        assert "emulator at" in proc.stdout.readline()
        line = proc.stdout.readline()
        cert = Path(line.split("certificate:", 1)[1].split()[0])
        assert cert.is_file() and (cert.parent / "key.pem").is_file()
        proc.send_signal(sig)
        assert proc.wait(15) == 0, proc.stderr.read() if proc.stderr else ""
        assert not cert.parent.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
