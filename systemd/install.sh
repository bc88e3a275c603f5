#!/usr/bin/env bash
# Install, upgrade or remove edgeloop as a systemd service.
#
#   sudo systemd/install.sh                  install or upgrade from this source tree, start
#   sudo systemd/install.sh --wheel F.whl    ... from a built wheel instead
#   sudo systemd/install.sh --uninstall      remove the service and /opt/edgeloop;
#                                            keep /etc/edgeloop and the history
#   sudo systemd/install.sh --uninstall --purge   remove config, history, cache and user too
#
# Layout: /opt/edgeloop/venv (the package and its dependencies), /usr/local/bin/edgeloop
# (a link to the venv's command), /etc/edgeloop/edgeloop.yaml (first install: the inert
# template config/edgeloop.template.yaml, which `check` refuses until edited, so the service
# is enabled but not started; never overwritten: a newer template lands beside it as
# edgeloop.yaml.dist),
# /etc/systemd/system/edgeloop.service, /var/lib/edgeloop (history, made by systemd's
# StateDirectory=), /var/cache/edgeloop (numba cache, CacheDirectory=), user `edgeloop`.
#
# Re-running is safe: it converges on the same tree and restarts the service only when the
# installed package or the unit changed.  DESTDIR=/some/root stages everything under that
# root without root privileges, users or systemctl (used by the tests); --dry-run prints
# what would be done and changes nothing.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: install.sh [options]
  --uninstall         remove the unit and the venv (keeps config and history)
  --purge             with --uninstall: also remove config, history, cache and the user
  --wheel FILE        install this wheel instead of the source tree
  --wheelhouse DIR    offline: resolve dependencies only from wheels in DIR
  --no-deps           install the edgeloop package only (dependencies already present)
  --python PYTHON     interpreter for the venv (default: python3; needs >= 3.11)
  --no-start          enable the service but do not (re)start it
  --dry-run           print the actions, change nothing
  -h, --help          this text
environment: DESTDIR=/path stages into that root (no users, no systemctl)
EOF
}

ACTION=install
PURGE=0
WHEEL=""
WHEELHOUSE=""
NO_DEPS=0
PYTHON=python3
START=1
DRY_RUN=0
while [ $# -gt 0 ]; do
  case "$1" in
    --uninstall) ACTION=uninstall ;;
    --purge) PURGE=1 ;;
    --wheel) WHEEL="${2:?--wheel needs a file}"; shift ;;
    --wheelhouse) WHEELHOUSE="${2:?--wheelhouse needs a directory}"; shift ;;
    --no-deps) NO_DEPS=1 ;;
    --python) PYTHON="${2:?--python needs an interpreter}"; shift ;;
    --no-start) START=0 ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
if [ "$PURGE" = 1 ] && [ "$ACTION" != uninstall ]; then
  echo "install.sh: --purge only goes with --uninstall" >&2
  exit 2
fi

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DESTDIR="${DESTDIR:-}"
DESTDIR="${DESTDIR%/}"
NAME=edgeloop
SVC_USER=edgeloop
OPT="$DESTDIR/opt/$NAME"
VENV="$OPT/venv"
ETC="$DESTDIR/etc/$NAME"
UNIT_DIR="$DESTDIR/etc/systemd/system"
BIN_DIR="$DESTDIR/usr/local/bin"
UNIT="$UNIT_DIR/$NAME.service"
STATE="$DESTDIR/var/lib/$NAME"
CACHE="$DESTDIR/var/cache/$NAME"
DOC_DIR="$OPT/share/doc"

say() { printf '%s\n' "install.sh: $*"; }

# Every change goes through run(), so --dry-run shows exactly what would happen.
run() {
  if [ "$DRY_RUN" = 1 ]; then
    printf '+ %s\n' "$*"
  else
    "$@"
  fi
}

# systemctl and account changes only on a real root filesystem.
live() { [ -z "$DESTDIR" ]; }

systemctl_() {
  if live; then
    run systemctl "$@"
  else
    say "skipped (DESTDIR set): systemctl $*"
  fi
}

fingerprint() {
  # What decides whether a running service must restart: the unit and the installed package.
  local files=()
  [ -f "$UNIT" ] && files+=("$UNIT")
  if [ -d "$VENV/lib" ]; then
    while IFS= read -r f; do files+=("$f"); done < <(
      find "$VENV/lib" -path "*/$NAME-*.dist-info/RECORD" 2>/dev/null | sort
    )
  fi
  if [ ${#files[@]} -eq 0 ]; then
    echo none
  else
    cat "${files[@]}" | sha256sum | cut -d' ' -f1
  fi
}

check_python() {
  if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "install.sh: $PYTHON not found (use --python)" >&2
    exit 1
  fi
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "install.sh: $PYTHON is older than 3.11" >&2
    exit 1
  fi
  if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    echo "install.sh: $PYTHON lacks venv/ensurepip (Debian: apt-get install python3-venv)" >&2
    exit 1
  fi
}

ensure_user() {
  if ! live; then
    say "skipped (DESTDIR set): system user $SVC_USER"
    return
  fi
  if id -u "$SVC_USER" >/dev/null 2>&1; then
    return
  fi
  run useradd --system --user-group --no-create-home --home-dir "/var/lib/$NAME" \
    --shell /usr/sbin/nologin --comment "edgeloop gateway agent" "$SVC_USER"
}

install_venv() {
  if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c '' >/dev/null 2>&1; then
    say "existing venv at $VENV is broken (Python upgraded?); recreating it"
    run rm -rf "$VENV"
  fi
  if [ ! -x "$VENV/bin/python" ] || [ "$DRY_RUN" = 1 ]; then
    run install -d -m 0755 "$OPT"
    run "$PYTHON" -m venv "$VENV"
  fi
  local target="$SRC"
  [ -n "$WHEEL" ] && target="$WHEEL"
  local pip=("$VENV/bin/python" -m pip --no-input --disable-pip-version-check -q)
  local idx=()
  [ -n "$WHEELHOUSE" ] && idx=(--no-index --find-links "$WHEELHOUSE")
  if [ "$NO_DEPS" = 0 ]; then
    # Dependencies as pinned by pyproject.toml, upgraded only where the pins demand it.
    run "${pip[@]}" install "${idx[@]}" --upgrade --upgrade-strategy only-if-needed "$target"
  fi
  # The package itself always, so a rebuilt tree with an unchanged version still lands.
  run "${pip[@]}" install "${idx[@]}" --no-deps --force-reinstall "$target"
}

install_files() {
  run install -d -m 0755 "$UNIT_DIR" "$DOC_DIR"
  run install -m 0644 "$SRC/systemd/$NAME.service" "$UNIT"
  if [ -f "$SRC/docs/operations.md" ]; then
    run install -m 0644 "$SRC/docs/operations.md" "$DOC_DIR/operations.md"
  fi
  # Config: root-owned, readable by the service group only (token files may sit beside it).
  run install -d -m 0750 "$ETC"
  # The inert template (device disabled, no loops, refused by `check` until edited), never
  # the simulator's demo config with a loop in auto.
  local cfg="$ETC/$NAME.yaml" tmpl="$SRC/config/$NAME.template.yaml"
  if [ -e "$cfg" ] && cmp -s "$tmpl" "$cfg"; then
    [ -e "$cfg.dist" ] && run rm -f "$cfg.dist"
  elif [ -e "$cfg" ]; then
    run install -m 0640 "$tmpl" "$cfg.dist"
    say "kept $cfg; the shipped template is in $cfg.dist"
  else
    run install -m 0640 "$tmpl" "$cfg"
  fi
  # `edgeloop` on the PATH (the venv's console script; absolute target, as on the live box)
  run install -d -m 0755 "$BIN_DIR"
  run ln -sfn "/opt/$NAME/venv/bin/$NAME" "$BIN_DIR/$NAME"
  if live; then
    run chown root:"$SVC_USER" "$ETC" "$cfg"
    [ -e "$cfg.dist" ] && run chown root:"$SVC_USER" "$cfg.dist"
  fi
  return 0
}

check_config() {
  if ! live || [ "$NO_DEPS" = 1 ] || [ "$DRY_RUN" = 1 ]; then
    return 0
  fi
  if ! "$VENV/bin/edgeloop" check "$ETC/$NAME.yaml"; then
    say "the configuration has errors (above); fix $ETC/$NAME.yaml, then: systemctl restart $NAME"
    return 1
  fi
}

do_install() {
  check_python
  if live && [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (or set DESTDIR to stage into a directory)" >&2
    exit 1
  fi
  local before after
  before="$(fingerprint)"
  ensure_user
  install_venv
  install_files
  after="$(fingerprint)"
  systemctl_ daemon-reload
  systemctl_ enable "$NAME.service"
  if ! check_config; then
    if grep -q '^template: true' "$ETC/$NAME.yaml"; then
      say "installed and enabled; not started until $ETC/$NAME.yaml is edited and passes check"
      exit 0
    fi
    say "installed, but not started"
    exit 1
  fi
  if [ "$START" = 0 ]; then
    say "installed and enabled; not started (--no-start)"
  elif live && systemctl is-active -q "$NAME.service"; then
    if [ "$before" != "$after" ]; then
      systemctl_ restart "$NAME.service"
      say "upgraded and restarted"
    else
      say "already installed and running; nothing changed"
    fi
  else
    systemctl_ start "$NAME.service"
  fi
  say "done. Logs: journalctl -u $NAME -f   Metrics: curl -s http://127.0.0.1:9105/metrics"
  say "PLCs off this host need: systemctl edit $NAME  ->  [Service] IPAddressAllow=<subnet>"
}

do_uninstall() {
  if live && [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (or set DESTDIR)" >&2
    exit 1
  fi
  if live && systemctl cat "$NAME.service" >/dev/null 2>&1; then
    systemctl_ disable --now "$NAME.service"
  fi
  [ -e "$UNIT" ] && run rm -f "$UNIT"
  [ -d "$UNIT_DIR/$NAME.service.d" ] && say "left local drop-ins in $UNIT_DIR/$NAME.service.d"
  systemctl_ daemon-reload
  [ -e "$OPT" ] && run rm -rf "$OPT"
  [ -L "$BIN_DIR/$NAME" ] && run rm -f "$BIN_DIR/$NAME"
  [ -e "$CACHE" ] && run rm -rf "$CACHE"
  if [ "$PURGE" = 1 ]; then
    [ -d "$UNIT_DIR/$NAME.service.d" ] && run rm -rf "$UNIT_DIR/$NAME.service.d"
    [ -e "$ETC" ] && run rm -rf "$ETC"
    [ -e "$STATE" ] && run rm -rf "$STATE"
    if live && id -u "$SVC_USER" >/dev/null 2>&1; then
      run userdel "$SVC_USER"
    fi
    say "purged: config, history, cache and user removed"
  else
    say "removed the service and $OPT; kept $ETC and $STATE (--purge removes them)"
  fi
}

if [ "$ACTION" = install ]; then
  do_install
else
  do_uninstall
fi
