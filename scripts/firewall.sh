#!/usr/bin/env bash
# Host firewall for an LLM Observatory server (ufw): deny everything inbound except SSH, HTTP
# and HTTPS; allow outbound.
#
# usage: sudo scripts/firewall.sh [--ssh-port PORT] [--ssh-from CIDR] [--dry-run]
#
#   --ssh-port PORT  SSH port to keep open (default 22)
#   --ssh-from CIDR  allow SSH only from this network (default: anywhere, rate-limited)
#   --dry-run        print the ufw commands instead of running them
#
# Docker publishes container ports through its own iptables chains, which ufw's INPUT rules do
# not see. That is why the compose file publishes nothing but nginx's 80/443, and why the
# fail2ban jail (docker/fail2ban/) bans in the DOCKER-USER chain. This script also checks that no
# other port is published by a running container.
set -Eeuo pipefail

ssh_port=22
ssh_from=""
dry_run=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --ssh-port) ssh_port="${2:?}"; shift ;;
        --ssh-from) ssh_from="${2:?}"; shift ;;
        --dry-run) dry_run=1 ;;
        -h | --help) sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "firewall: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[[ "${ssh_port}" =~ ^[0-9]+$ ]] || { echo "firewall: --ssh-port must be a number" >&2; exit 2; }

run() {
    if [[ ${dry_run} -eq 1 ]]; then
        echo "$*"
    else
        "$@"
    fi
}

if [[ ${dry_run} -eq 0 ]]; then
    [[ $(id -u) -eq 0 ]] || { echo "firewall: run as root (sudo)" >&2; exit 1; }
    command -v ufw >/dev/null || { echo "firewall: install ufw first: apt-get install ufw" >&2; exit 1; }
fi

# Keep the SSH rule first so enabling the firewall cannot lock out the current session.
if [[ -n "${ssh_from}" ]]; then
    run ufw allow proto tcp from "${ssh_from}" to any port "${ssh_port}" comment "ssh"
else
    run ufw limit "${ssh_port}/tcp" comment "ssh (rate-limited)"
fi
run ufw allow 80/tcp comment "http (redirects to https, ACME)"
run ufw allow 443/tcp comment "https"
run ufw default deny incoming
run ufw default allow outgoing
run ufw logging low
run ufw --force enable
run ufw status verbose

if [[ ${dry_run} -eq 0 ]] && command -v docker >/dev/null 2>&1; then
    published="$(docker ps --format '{{.Names}} {{.Ports}}' | grep -oE '(0\.0\.0\.0|\[::\]|::):[0-9]+' |
        sed -E 's/.*://' | sort -u | grep -vxE '80|443' || true)"
    if [[ -n "${published}" ]]; then
        echo "firewall: WARNING: containers publish ports other than 80/443: ${published//$'\n'/ }" >&2
        echo "firewall: Docker bypasses ufw for published ports; remove them from the compose file." >&2
        exit 1
    fi
fi
