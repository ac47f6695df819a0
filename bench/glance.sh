# Sourced by the bench scripts: starts Debian's glance-api configured like the tests (tests/support/glance/) in
# "$1" (a fresh directory), sets GLANCE (its pid) and GLANCE_URL, and waits until it answers.
start_glance() {
    local dir="$1" port
    rm -rf "$dir" && mkdir -p "$dir/images" "$dir/lock"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    sed -e "s|@DIR@|$dir|g" -e "s|@PORT@|$port|g" -e "s|@SIZE_CAP@|1099511627776|g" \
        tests/support/glance/glance-api.conf > "$dir/glance-api.conf"
    cp tests/support/glance/policy.yaml tests/support/glance/glance-api-paste.ini "$dir/"
    glance-manage --config-file "$dir/glance-api.conf" db_sync >/dev/null 2>&1
    glance-api --config-file "$dir/glance-api.conf" >/dev/null 2>&1 &
    GLANCE=$!
    GLANCE_URL="http://127.0.0.1:$port"
    for _ in $(seq 600); do curl -fs "$GLANCE_URL/v2/images" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "glance-api did not start (see $dir/glance-api.log)" >&2
    return 1
}
