#!/usr/bin/env bash
# Make sure the services the tests talk to are installed and running on this machine:
# PostgreSQL on 127.0.0.1:5432 (trust auth, database "test") and Mosquitto on 127.0.0.1:1883, and
# Debian's chromium for the console's browser tests.
# Installs the Debian packages when they are missing (fresh machine), starts them when they are down.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

apt_install() {
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# --- Programs the tests call ----------------------------------------------------------------------
# Each "program:package" pair: the Debian package is installed when the program is missing.
# unzip, openssl and sha256sum: a test follows an export package's VERIFY.txt by hand, as a
# recipient with standard tools would. chromium: the console's browser tests drive Debian's build
# through Playwright (launched by its path, /usr/bin/chromium; Playwright's own download is not used).
PROGRAMS="unzip:unzip openssl:openssl sha256sum:coreutils chromium:chromium"
missing=""
for pair in $PROGRAMS; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing="$missing ${pair#*:}"
done
# Libraries a program needs that a minimal Debian lacks: Playwright's own node driver (which starts
# the browser) links libatomic.so.1.
ldconfig -p 2>/dev/null | grep -q 'libatomic.so.1 ' || [ -e /usr/lib/x86_64-linux-gnu/libatomic.so.1 ] \
  || [ -e /usr/lib/aarch64-linux-gnu/libatomic.so.1 ] || missing="$missing libatomic1"
if [ -n "$missing" ]; then
  echo "installing$missing"; apt_install $missing
fi

# --- Mosquitto ---------------------------------------------------------------------------------
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  echo "installing mosquitto"; apt_install mosquitto
fi
if ! port_open 1883; then
  echo "starting mosquitto"
  if [ -f /etc/mosquitto/mosquitto.conf ]; then
    $SUDO mkdir -p /run/mosquitto /var/log/mosquitto /var/lib/mosquitto
    $SUDO chown mosquitto: /run/mosquitto /var/log/mosquitto /var/lib/mosquitto 2>/dev/null || true
    if ! grep -q '^listener 1883' /etc/mosquitto/mosquitto.conf; then
      printf 'listener 1883 127.0.0.1\nallow_anonymous true\n' | $SUDO tee -a /etc/mosquitto/mosquitto.conf >/dev/null
    fi
    $SUDO /usr/sbin/mosquitto -d -c /etc/mosquitto/mosquitto.conf
  else
    $SUDO /usr/sbin/mosquitto -d -p 1883
  fi
  for _ in $(seq 50); do port_open 1883 && break; sleep 0.2; done
fi

# --- PostgreSQL ---------------------------------------------------------------------------------
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  echo "installing postgresql"; apt_install postgresql
fi
if ! port_open 5432; then
  echo "starting postgresql"
  ver=$(ls /etc/postgresql | sort -V | tail -n1)
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main start
  for _ in $(seq 100); do port_open 5432 && break; sleep 0.2; done
fi
# Trust auth on loopback and a "test" database, as the tests expect (only set up if missing).
if ! psql -h 127.0.0.1 -U postgres -d test -c 'select 1' >/dev/null 2>&1; then
  ver=$(ls /etc/postgresql | sort -V | tail -n1)
  hba=/etc/postgresql/$ver/main/pg_hba.conf
  if ! $SUDO grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    $SUDO sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main reload
  fi
  $SUDO -u postgres psql -qc 'create database test' 2>/dev/null || psql -h 127.0.0.1 -U postgres -qc 'create database test' || true
fi
port_open 1883 && port_open 5432 && echo "services ready: PostgreSQL :5432, Mosquitto :1883"
