# Sourced by the benchmarks: start_azure DIR starts Azurite and the ARM fake of the tests (tests/support/arm.py)
# under DIR and exports the environment that points uplosi at them; sets AZURE_PIDS, AZURE_ARM_URL, AZURE_BLOB_URL
# and AZURE_SUBSCRIPTION. With BANDWIDTH set (MiB/s), the SAS URLs lead through tests/support/fault_proxy.py, which
# reads the Put Page bodies at that rate.
. "$(dirname "${BASH_SOURCE[0]}")/tls.sh"

start_azure() {
    local dir="$1" root="$PWD" blob_port arm_port
    command -v azurite-blob >/dev/null || { echo "needs azurite (npm install -g azurite)" >&2; exit 2; }
    python3 -c "import azure.storage.blob" 2>/dev/null || { echo "needs pip install azure-storage-blob" >&2; exit 2; }
    blob_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    arm_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    mkdir -p "$dir/azurite"
    (cd "$dir/azurite" && exec azurite-blob --blobHost 127.0.0.1 --blobPort "$blob_port" --inMemoryPersistence \
        --disableTelemetry --skipApiVersionCheck --loose >/dev/null 2>&1) &
    AZURE_PIDS="$!"
    make_tls "$dir/tls"
    AZURE_SUBSCRIPTION=0a1b2c3d-0000-4000-8000-000000000042
    AZURE_BLOB_URL="http://127.0.0.1:$blob_port/devstoreaccount1"
    AZURE_ARM_URL="https://127.0.0.1:$arm_port"
    local sas=()
    if [ -n "${BANDWIDTH:-}" ]; then
        local proxy_port
        proxy_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
        python3 "$root/tests/support/fault_proxy.py" --port "$proxy_port" --upstream "http://127.0.0.1:$blob_port" \
            --stats "$dir/proxy.json" --match "^PUT /devstoreaccount1/" --rate 0 --bandwidth "$BANDWIDTH" &
        AZURE_PIDS="$AZURE_PIDS $!"
        sas=(--sas-base "http://127.0.0.1:$proxy_port/devstoreaccount1")
    fi
    python3 "$root/tests/support/arm.py" --port "$arm_port" --cert "$dir/tls/server.pem" --key "$dir/tls/server.key" \
        --state "$dir/arm" --azurite "$AZURE_BLOB_URL" --tenant bench-tenant --client-id bench \
        --client-secret bench-secret --subscription "$AZURE_SUBSCRIPTION" --groups bench --no-content "${sas[@]}" &
    AZURE_PIDS="$AZURE_PIDS $!"
    for port in "$blob_port" "$arm_port"; do
        for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    done
    export AZURE_TENANT_ID=bench-tenant AZURE_CLIENT_ID=bench AZURE_CLIENT_SECRET=bench-secret
    export AZURE_AUTHORITY_HOST="$AZURE_ARM_URL" SSL_CERT_FILE="$dir/tls/ca.pem"
}
