"""Host hardening: the fail2ban filters and jails, and the ufw firewall script.

fail2ban-regex matches the filters against access-log lines in nginx's JSON format
(log_format json_combined of docker/nginx/nginx.prod.conf); then a real fail2ban-server runs the
shipped jails over a log file and bans the address that keeps failing and nobody else. Only the
log path and the ban action (a file instead of iptables) differ from a host install.
"""

from __future__ import annotations

import json
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from .conftest import DOCKER, SCRIPTS, run, stop_process, tool, wait_until

FILTERS = DOCKER / "fail2ban/filter.d"
JAIL = DOCKER / "fail2ban/jail.d/llm-observatory.conf"
ATTACKER = "203.0.113.7"
FLOODER = "203.0.113.99"
CLIENT = "198.51.100.2"


def log_line(addr: str, status: int, uri: str = "/v1/traces", method: str = "POST") -> str:
    """One access-log line exactly as log_format json_combined writes it."""
    fields = {
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00"),
        "remote_addr": addr,
        "status": status,
        "method": method,
        "uri": uri,
        "host": "api.observatory.yourdomain.com",
        "request_length": 512,
        "bytes_sent": 2,
        "request_time": 0.004,
        "upstream_addr": "172.30.0.5:8000",
        "upstream_status": str(status),
        "upstream_response_time": "0.004",
        "request_id": "4b1f0c",
        "referer": "",
        "user_agent": "OTel-OTLP-Exporter-Python/1.27.0",
        "tls": "TLSv1.3",
    }
    return json.dumps(fields, separators=(",", ":"))


def test_sample_line_has_the_shape_of_nginx_log_format() -> None:
    """The test's lines and nginx's log_format list the same fields in the same order."""
    conf = (DOCKER / "nginx/nginx.prod.conf").read_text()
    block = conf[conf.index("log_format json_combined") : conf.index("access_log")]
    fields_in_conf = re.findall(r'"(\w+)":', block)
    assert fields_in_conf == list(json.loads(log_line(CLIENT, 200)))
    assert '"status":$status,' in block  # a number, not a string: the filters rely on it


def regex_summary(log: Path, filter_name: str) -> tuple[int, int]:
    out = run([tool("fail2ban-regex"), str(log), str(FILTERS / f"{filter_name}.conf")]).stdout
    match = re.search(r"Lines: (\d+) lines, (\d+) ignored, (\d+) matched, (\d+) missed", out)
    assert match, out
    return int(match.group(1)), int(match.group(3))


def test_auth_filter_matches_refused_requests_only(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    lines = [
        log_line(ATTACKER, 401),
        log_line(ATTACKER, 403, "/api/v1/admin/keys", "GET"),
        log_line(ATTACKER, 401, "/api/v1/traces?limit=10", "GET"),
        log_line(CLIENT, 200),
        log_line(CLIENT, 204, "/api/v1/traces", "GET"),
        log_line(CLIENT, 404, "/favicon.ico", "GET"),
        log_line(CLIENT, 429),
        log_line(CLIENT, 503),
        log_line(CLIENT, 401, "/health/ready", "GET"),
    ]
    log.write_text("\n".join(lines) + "\n")
    total, matched = regex_summary(log, "llm-observatory-auth")
    assert (total, matched) == (9, 3)


def test_ratelimit_filter_matches_429_only(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    lines = [log_line(FLOODER, 429) for _ in range(5)] + [
        log_line(CLIENT, 200),
        log_line(CLIENT, 401),
        log_line(CLIENT, 503),
    ]
    log.write_text("\n".join(lines) + "\n")
    assert regex_summary(log, "llm-observatory-ratelimit") == (8, 5)


def test_jails_ban_the_failing_address_and_nobody_else(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    # fail2ban's stock configuration (jail.conf, action.d, filter.d) plus ours, without the
    # distribution's default jails.
    run(["cp", "-r", "/etc/fail2ban", str(conf)])
    for path in (conf / "jail.d").iterdir():
        path.unlink()
    for path in FILTERS.iterdir():
        (conf / "filter.d" / path.name).write_text(path.read_text())
    (conf / "jail.d" / JAIL.name).write_text(JAIL.read_text())
    access, f2b_log = tmp_path / "access.log", tmp_path / "fail2ban.log"
    access.touch()
    f2b_log.touch()
    bans = {name: tmp_path / f"bans-{name}" for name in ("auth", "ratelimit", "recidive")}
    (conf / "jail.local").write_text(
        "".join(
            f"[llm-observatory-{name}]\n"
            f"logpath = {f2b_log if name == 'recidive' else access}\n"
            f"action = dummy[target={target}]\n\n"
            for name, target in bans.items()
        )
    )
    sock, pid = tmp_path / "f2b.sock", tmp_path / "f2b.pid"
    (conf / "fail2ban.local").write_text(
        f"[Definition]\nlogtarget = {f2b_log}\nsocket = {sock}\npidfile = {pid}\n"
        "dbfile = :memory:\n"
    )
    server = subprocess.Popen(
        [tool("fail2ban-server"), "-f", "-x", "-c", str(conf), "-s", str(sock), "-p", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = [tool("fail2ban-client"), "-c", str(conf), "-s", str(sock)]
    try:
        wait_until(lambda: run([*client, "ping"], check=False).returncode == 0, 30, "fail2ban")
        status = run([*client, "status"]).stdout
        assert "llm-observatory-auth, llm-observatory-ratelimit, llm-observatory-recidive" in status
        jail = run([*client, "get", "llm-observatory-auth", "maxretry"]).stdout.strip()
        maxretry = int(jail)
        with access.open("a") as out:
            for _ in range(maxretry):
                out.write(log_line(ATTACKER, 401) + "\n")
            for _ in range(50):
                out.write(log_line(CLIENT, 200) + "\n")
            # Fewer failures than maxretry: a user mistyping a key is not banned.
            for _ in range(maxretry - 1):
                out.write(log_line("198.51.100.3", 401) + "\n")
            for _ in range(100):
                out.write(log_line(FLOODER, 429) + "\n")

        def banned(jail_name: str) -> str:
            out = run([*client, "status", jail_name]).stdout
            return re.search(r"Banned IP list:\s*(.*)", out).group(1).strip()  # type: ignore[union-attr]

        wait_until(lambda: banned("llm-observatory-auth") == ATTACKER, 20, "the ban")
        assert bans["auth"].read_text().splitlines()[-1] == f"+{ATTACKER}"
        # 100 rate-limited requests are well below the rate-limit jail's threshold.
        assert banned("llm-observatory-ratelimit") == ""
        assert CLIENT not in bans["auth"].read_text()
        assert "198.51.100.3" not in bans["auth"].read_text()
    finally:
        stop_process(server)


def test_jails_ban_in_docker_user_chain() -> None:
    text = JAIL.read_text()
    actions = re.findall(r"^action\s*=\s*(.+)$", text, re.M)
    assert len(actions) == 3
    for action in actions:
        assert action.startswith("iptables-allports[") and "chain=DOCKER-USER" in action
    assert "logpath  = /var/log/llm-observatory/nginx/access.log" in text


def test_firewall_opens_only_ssh_http_https() -> None:
    out = run(["bash", str(SCRIPTS / "firewall.sh"), "--dry-run"]).stdout.splitlines()
    opened = [line for line in out if line.startswith(("ufw allow", "ufw limit"))]
    assert opened == [
        "ufw limit 22/tcp comment ssh (rate-limited)",
        "ufw allow 80/tcp comment http (redirects to https, ACME)",
        "ufw allow 443/tcp comment https",
    ]
    assert "ufw default deny incoming" in out
    assert "ufw --force enable" in out
    # SSH is allowed before the firewall is enabled (no lock-out).
    assert out.index(opened[0]) < out.index("ufw --force enable")
    restricted = run(
        [
            "bash",
            str(SCRIPTS / "firewall.sh"),
            "--dry-run",
            "--ssh-port",
            "2222",
            "--ssh-from",
            "192.0.2.0/24",
        ]
    ).stdout
    assert "ufw allow proto tcp from 192.0.2.0/24 to any port 2222 comment ssh" in restricted
    bad = run(["bash", str(SCRIPTS / "firewall.sh"), "--dry-run", "--ssh-port", "x"], check=False)
    assert bad.returncode == 2
