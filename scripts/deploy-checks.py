#!/usr/bin/env python3
"""Assertions for scripts/check-deploy.sh: what terraform built on moto, and what it plans.

  smoke OUTPUTS_JSON ENDPOINT MAX_RECEIVE_COUNT
      Talks to the stack terraform applied on moto with boto3 (a real AWS SDK): publishes to the
      created topic and receives from the created queue, drives a poison message into the DLQ,
      and compares queue/topic/subscription/ledger table/ECS/ALB/IAM/alarm settings with what the
      services need.
  binaries OUTPUTS_JSON ENDPOINT RECEIVER_BINARY WORKER_BINARY
      Runs the real receiver and worker with the environment of their ECS task definitions (read back
      from moto), checks them with their container health check (--check-health), sends one order
      through receiver -> topic -> queue -> worker, and stops both with SIGTERM as ECS does.
  plan-scaling PLAN_JSON
      The plan to re-enable the parts the moto apply left out (autoscaling, DLQ redrive-allow):
      exactly those resources are created, with the right metric math, and nothing drifts except
      attributes moto does not round-trip.
  plan-variants PLAN_JSON
      The plan with egress_mode=endpoints and a certificate: VPC endpoints (DynamoDB's gateway
      among them) replace the NAT gateway, an HTTPS listener appears and port 80 redirects to it.
  plan-rollback PLAN_JSON
      The README's rollback command (`terraform apply -var image_tag=<previous>`) planned on the applied
      stack: both task definitions get a new revision with the other tag, both services move to it in
      place, and nothing else changes.
  plan-hardening PLAN_JSON
      A plan on the applied stack with other hardening variables (worker on Fargate Spot, another
      shutdown deadline, sync timeout and SLO): the worker service changes in place to its Spot
      strategy, stopTimeout and deregistration delay cover their budgets, the SLO alarms follow their
      variables, and the IAM roles and the topic policy are as they must be.
  plan-ledger PLAN_JSON
      A plan on the applied stack with other ledger variables: the order ledger table as it must be
      (on-demand, order_id string hash key, TTL on expires_at, SSE with the stack key, point-in-time
      recovery), IAM policies that grant no Scan/Query/wildcard DynamoDB action on anything but the
      table, ORDERS_TABLE and LEDGER_RETENTION in both task definitions, and the table changed in
      place only.

Each assertion prints "ok" or "FAIL"; the exit status is 1 if any failed.
"""

import fnmatch
import json
import pathlib
import re
import sys
import time
import uuid

QUEUE_RETENTION = 4 * 24 * 3600  # the issue: 4 days
DLQ_RETENTION = 14 * 24 * 3600  # the issue: 14 days
RECEIVE_WAIT = 20  # the issue: long polling, 20 s
LEDGER_RETENTION_DAYS = 15  # variables.tf default of ledger_retention_days
WORKER_LIB = pathlib.Path(__file__).resolve().parent.parent / "worker" / "src" / "lib.rs"
FARGATE_MAX_STOP_TIMEOUT = 120
# variables.tf defaults: the receiver's SYNC_TIMEOUT, the worker's SHUTDOWN_DEADLINE, the SLO.
SYNC_TIMEOUT_SECONDS = 9
SHUTDOWN_DEADLINE_SECONDS = 25
SLO_TARGET_PERCENT, SLO_WINDOW_DAYS = 99.9, 30
# The burn-rate pairs: (long window, short window) in seconds, and the factor at the defaults.
BURN_PAIRS = {"fast": ((3600, 300), 14.4), "slow": ((21600, 1800), 6.0)}
# The roles and the prefix each one's name starts with (after "<name>-"): name_prefix, never name.
ROLE_PREFIXES = {"execution": "ecs-execution-", "receiver": "receiver-task-", "worker": "worker-task-", "flow_log": "flow-log-"}
# Every action the orders topic's policy denies without TLS.
SNS_TOPIC_ACTIONS = sorted([
    "SNS:GetTopicAttributes", "SNS:SetTopicAttributes", "SNS:AddPermission", "SNS:RemovePermission",
    "SNS:DeleteTopic", "SNS:Subscribe", "SNS:ListSubscriptionsByTopic", "SNS:Publish",
])

# The order ledger: what each task role may do on the table, and nothing else. Every access is by
# order_id, so Scan and Query (and any wildcard that covers them) must never be granted.
LEDGER_ACTIONS = {
    "receiver": {"dynamodb:PutItem", "dynamodb:GetItem", "dynamodb:UpdateItem"},
    "worker": {"dynamodb:PutItem", "dynamodb:GetItem", "dynamodb:UpdateItem"},
}
FORBIDDEN_DYNAMODB_ACTIONS = ("dynamodb:Scan", "dynamodb:Query")

# Attributes moto does not return after create, so the provider sees a difference on every plan.
# Anything else changing in place is real drift and fails the check.
MOTO_ROUND_TRIP_GAPS = {
    "aws_ecs_service": {"health_check_grace_period_seconds", "availability_zone_rebalancing"},
    "aws_sqs_queue": {"redrive_policy"},  # only if the JSON is equal after parsing (whitespace)
    "aws_vpc_security_group_ingress_rule": {"referenced_security_group_id", "description"},
    "aws_vpc_security_group_egress_rule": {"referenced_security_group_id", "description"},
}


class Checks:
    """Collects named assertions; a failed one is reported, never raised, so all are shown."""

    def __init__(self):
        self.failed = 0

    def check(self, name, condition, detail=""):
        if condition:
            print(f"    ok    {name}")
        else:
            self.failed += 1
            print(f"    FAIL  {name}" + (f": {detail}" if detail else ""))
        return condition

    def equal(self, name, actual, expected):
        return self.check(name, actual == expected, f"expected {expected!r}, got {actual!r}")

    def exit(self):
        sys.exit(1 if self.failed else 0)


# --- IAM policy statements: DynamoDB least privilege (used on moto's roles and on plans) ---------


def as_list(value):
    return [value] if isinstance(value, str) else list(value or [])


def dynamodb_actions(statements):
    """Every DynamoDB action (or wildcard that covers DynamoDB) these statements allow."""
    return {
        action
        for s in statements
        if s.get("Effect") == "Allow"
        for action in as_list(s.get("Action"))
        if action == "*" or action.lower().startswith("dynamodb:")
    }


def dynamodb_problems(statements, table_arn):
    """What is wrong with the DynamoDB grants in these statements: Scan or Query, or a wildcard that
    covers them or more; NotAction/NotResource; a resource other than exactly the table's ARN
    (no index ARNs, no table/*, no "*")."""
    problems = []
    for s in statements:
        if s.get("Effect") != "Allow":
            continue
        sid = s.get("Sid", "(no Sid)")
        if "NotAction" in s or "NotResource" in s:
            problems.append(f"{sid}: NotAction/NotResource")
            continue
        actions = [a for a in as_list(s.get("Action")) if a == "*" or a.lower().startswith("dynamodb:")]
        if not actions:
            continue
        for action in actions:
            if "*" in action or "?" in action:
                problems.append(f"{sid}: wildcard action {action}")
            for forbidden in FORBIDDEN_DYNAMODB_ACTIONS:
                # IAM matches actions case-insensitively, with * and ? wildcards.
                if fnmatch.fnmatchcase(forbidden.lower(), action.lower()):
                    problems.append(f"{sid}: {action} allows {forbidden}")
        resources = as_list(s.get("Resource"))
        if resources != [table_arn]:
            problems.append(f"{sid}: DynamoDB resources {resources}, not only the table {table_arn}")
    return problems


def kms_via_dynamodb(statements, key_arn):
    """The statements that let a role use the stack key, and only through DynamoDB."""
    return [
        s
        for s in statements
        if s.get("Effect") == "Allow"
        and any(a.lower().startswith("kms:") for a in as_list(s.get("Action")))
        and as_list(s.get("Resource")) == [key_arn]
        and s.get("Condition", {}).get("StringEquals", {}).get("kms:ViaService", "").startswith("dynamodb.")
    ]


# --- shared by smoke and the plans -------------------------------------------------------------


def seconds(humantime):
    """"25s" -> 25 (the services' duration variables, as Terraform writes them)."""
    match = re.fullmatch(r"(\d+)s", humantime or "")
    return int(match.group(1)) if match else None


def worker_graces():
    """RELEASE_GRACE and FLUSH_GRACE of worker/src/lib.rs, in seconds: what the worker may still take
    after its shutdown deadline."""
    text = WORKER_LIB.read_text()
    found = {}
    for name in ("RELEASE_GRACE", "FLUSH_GRACE"):
        match = re.search(rf"const {name}: Duration = Duration::from_secs\((\d+)\);", text)
        found[name] = int(match.group(1)) if match else None
    return found


def check_budgets(c, containers, deregistration_delays):
    """The stop and drain budgets: the worker's stopTimeout covers SHUTDOWN_DEADLINE + the worker's
    graces within Fargate's maximum, and every receiver target group's deregistration delay covers
    the longest request (SYNC_TIMEOUT + PAYMENT_LATENCY)."""
    graces = worker_graces()
    c.check("worker/src/lib.rs still declares RELEASE_GRACE and FLUSH_GRACE in whole seconds",
            None not in graces.values(), graces)
    worker = containers.get("worker", {})
    env = {pair["name"]: pair["value"] for pair in worker.get("environment", [])}
    deadline, stop = seconds(env.get("SHUTDOWN_DEADLINE")), worker.get("stopTimeout")
    needed = (deadline or 0) + sum(v or 0 for v in graces.values())
    c.check(f"worker: SHUTDOWN_DEADLINE ({env.get('SHUTDOWN_DEADLINE')}) is set", deadline is not None)
    c.check(f"worker: stopTimeout {stop} s covers SHUTDOWN_DEADLINE + RELEASE_GRACE + FLUSH_GRACE = {needed} s, "
            f"with a margin, within Fargate's {FARGATE_MAX_STOP_TIMEOUT} s",
            isinstance(stop, int) and needed < stop <= FARGATE_MAX_STOP_TIMEOUT, stop)
    receiver = containers.get("receiver", {})
    env = {pair["name"]: pair["value"] for pair in receiver.get("environment", [])}
    longest = (seconds(env.get("SYNC_TIMEOUT")) or 0) + (seconds(env.get("PAYMENT_LATENCY")) or 0)
    c.check(f"receiver: SYNC_TIMEOUT ({env.get('SYNC_TIMEOUT')}) and PAYMENT_LATENCY are set",
            seconds(env.get("SYNC_TIMEOUT")) is not None and seconds(env.get("PAYMENT_LATENCY")) is not None)
    c.check("two receiver target groups (default and POST /orders/async)", len(deregistration_delays) == 2, deregistration_delays)
    for group, delay in deregistration_delays.items():
        c.check(f"target group {group}: deregistration delay {delay} s covers SYNC_TIMEOUT + PAYMENT_LATENCY = {longest} s",
                delay is not None and int(delay) >= longest > 0, delay)


def check_topic_policy(c, policy, topic_arn, receiver_role_arn):
    """Only the receiver's role publishes to the orders topic, and nothing reaches it without TLS."""
    statements = {s.get("Sid"): s for s in policy.get("Statement", [])}
    c.equal("topic policy: exactly the publish allow, the publish deny and the TLS deny",
            sorted(statements), ["DenyRequestsWithoutTls", "NobodyElsePublishes", "ReceiverPublishesOrders"])
    allow = statements.get("ReceiverPublishesOrders", {})
    c.equal("topic policy: the receiver's role may publish",
            (allow.get("Effect"), allow.get("Principal"), allow.get("Action"), allow.get("Resource")),
            ("Allow", {"AWS": receiver_role_arn}, "SNS:Publish", topic_arn))
    deny = statements.get("NobodyElsePublishes", {})
    c.equal("topic policy: every other principal is denied publishing",
            (deny.get("Effect"), deny.get("Principal"), deny.get("Action"), deny.get("Resource"), deny.get("Condition")),
            ("Deny", {"AWS": "*"}, "SNS:Publish", topic_arn, {"ArnNotEquals": {"aws:PrincipalArn": receiver_role_arn}}))
    tls = statements.get("DenyRequestsWithoutTls", {})
    c.equal("topic policy: requests without TLS are denied, for every topic action",
            (tls.get("Effect"), tls.get("Principal"), sorted(as_list(tls.get("Action"))), tls.get("Resource"), tls.get("Condition")),
            ("Deny", {"AWS": "*"}, SNS_TOPIC_ACTIONS, topic_arn, {"Bool": {"aws:SecureTransport": "false"}}))
    allows = [s for s in policy.get("Statement", []) if s.get("Effect") == "Allow"]
    c.check("topic policy: no other Allow", len(allows) == 1, allows)


# --- smoke: the applied stack on moto ---------------------------------------------------------


def smoke(outputs_path, endpoint, max_receive_count):
    import boto3  # ships with moto, installed in the check's venv
    from botocore.exceptions import ClientError

    outputs = {key: value["value"] for key, value in json.load(open(outputs_path)).items()}
    session = boto3.Session(aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1")
    sns, sqs, ecs, elbv2, iam, cloudwatch, dynamodb, ecr = (
        session.client(service, endpoint_url=endpoint)
        for service in ("sns", "sqs", "ecs", "elbv2", "iam", "cloudwatch", "dynamodb", "ecr")
    )
    c = Checks()
    topic_arn, queue_url, dlq_url = outputs["orders_topic_arn"], outputs["orders_queue_url"], outputs["orders_dlq_url"]

    def attributes(url):
        return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]

    queue, dlq = attributes(queue_url), attributes(dlq_url)

    print("  messaging: publish to the topic, receive from the queue")
    body = json.dumps({"v": 1, "check": "deploy", "sent_at": time.time()})
    sns.publish(
        TopicArn=topic_arn,
        Message=body,
        MessageAttributes={"schema_version": {"DataType": "Number", "StringValue": "1"}},
    )
    received = sqs.receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=5, MessageAttributeNames=["All"]
    ).get("Messages", [])
    c.equal("exactly one message arrives", len(received), 1)
    if received:
        message = received[0]
        c.equal("raw delivery: body is the published message, no SNS envelope", message["Body"], body)
        c.equal(
            "message attributes survive raw delivery",
            message.get("MessageAttributes", {}).get("schema_version", {}).get("StringValue"),
            "1",
        )
        sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])

    print(f"  messaging: a poison message reaches the DLQ after {max_receive_count} receives")
    sns.publish(TopicArn=topic_arn, Message="poison")
    receives = 0
    for _ in range(max_receive_count + 1):
        got = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=2, VisibilityTimeout=0).get("Messages", [])
        receives += len(got)
    c.equal(f"received {max_receive_count} times, then gone from the queue", receives, max_receive_count)
    dead = sqs.receive_message(QueueUrl=dlq_url, WaitTimeSeconds=2).get("Messages", [])
    c.equal("the DLQ holds the poison message", [m["Body"] for m in dead], ["poison"])

    print("  messaging: queue, DLQ, topic and subscription settings")
    redrive = json.loads(queue.get("RedrivePolicy", "{}"))
    c.equal("redrive target is the DLQ", redrive.get("deadLetterTargetArn"), dlq["QueueArn"])
    c.equal("redrive maxReceiveCount", int(redrive.get("maxReceiveCount", -1)), max_receive_count)
    c.equal("queue retention 4 days", int(queue["MessageRetentionPeriod"]), QUEUE_RETENTION)
    c.equal("queue receive wait 20 s", int(queue["ReceiveMessageWaitTimeSeconds"]), RECEIVE_WAIT)
    c.check("queue visibility timeout 30 s or more", int(queue["VisibilityTimeout"]) >= 30, queue["VisibilityTimeout"])
    c.equal("DLQ retention 14 days", int(dlq["MessageRetentionPeriod"]), DLQ_RETENTION)
    c.equal("queue SSE-SQS", queue.get("SqsManagedSseEnabled"), "true")
    c.equal("DLQ SSE-SQS", dlq.get("SqsManagedSseEnabled"), "true")
    statements = json.loads(queue.get("Policy", '{"Statement": []}'))["Statement"]
    c.equal("queue policy has one statement", len(statements), 1)
    if statements:
        statement = statements[0]
        c.equal("queue policy principal", statement.get("Principal"), {"Service": "sns.amazonaws.com"})
        c.equal("queue policy action", statement.get("Action"), "sqs:SendMessage")
        c.equal("queue policy resource", statement.get("Resource"), queue["QueueArn"])
        c.equal(
            "queue policy allows only this topic (aws:SourceArn)",
            statement.get("Condition"),
            {"ArnEquals": {"aws:SourceArn": topic_arn}},
        )
    topic = sns.get_topic_attributes(TopicArn=topic_arn)["Attributes"]
    c.check("topic SSE with the stack KMS key", topic.get("KmsMasterKeyId", "").startswith("arn:aws:kms:"), topic)
    subscriptions = sns.list_subscriptions_by_topic(TopicArn=topic_arn)["Subscriptions"]
    c.equal(
        "one subscription: SQS to the orders queue",
        [(s["Protocol"], s["Endpoint"]) for s in subscriptions],
        [("sqs", queue["QueueArn"])],
    )
    if subscriptions:
        attrs = sns.get_subscription_attributes(SubscriptionArn=subscriptions[0]["SubscriptionArn"])["Attributes"]
        c.equal("subscription raw message delivery", attrs.get("RawMessageDelivery"), "true")
        undelivered = attributes(outputs["orders_undelivered_queue_url"])
        c.equal("subscription redrive policy: undeliverable orders go to their own DLQ",
                json.loads(attrs.get("RedrivePolicy") or "{}"), {"deadLetterTargetArn": undelivered["QueueArn"]})
        c.check("the subscription's DLQ is neither the orders queue nor its DLQ",
                undelivered["QueueArn"] not in (queue["QueueArn"], dlq["QueueArn"]), undelivered["QueueArn"])
        c.equal("subscription DLQ: SSE-SQS, 14 days", (undelivered.get("SqsManagedSseEnabled"), int(undelivered["MessageRetentionPeriod"])),
                ("true", DLQ_RETENTION))
        policy = json.loads(undelivered.get("Policy", '{"Statement": []}'))["Statement"]
        c.equal("subscription DLQ policy: only SNS, on behalf of the orders topic, may send",
                [(s.get("Effect"), s.get("Principal"), s.get("Action"), s.get("Resource"), s.get("Condition")) for s in policy],
                [("Allow", {"Service": "sns.amazonaws.com"}, "sqs:SendMessage", undelivered["QueueArn"],
                  {"ArnEquals": {"aws:SourceArn": topic_arn}})])

    print("  dynamodb: the order ledger table")
    cluster = outputs["ecs_cluster_name"]
    key_arn = topic.get("KmsMasterKeyId", "")  # the stack key (checked above)
    table_name, table_arn = outputs["orders_table_name"], outputs["orders_table_arn"]
    table = dynamodb.describe_table(TableName=table_name)["Table"]
    c.equal("orders_table_arn output is the table's ARN", table.get("TableArn"), table_arn)
    c.equal("table named <name>-orders", table_name, f"{cluster}-orders")
    c.equal("on-demand billing (PAY_PER_REQUEST)", table.get("BillingModeSummary", {}).get("BillingMode"), "PAY_PER_REQUEST")
    c.equal("key schema: order_id HASH, no sort key", table.get("KeySchema"), [{"AttributeName": "order_id", "KeyType": "HASH"}])
    c.equal("order_id is a string (S)", table.get("AttributeDefinitions"), [{"AttributeName": "order_id", "AttributeType": "S"}])
    c.equal("no secondary indexes", (table.get("GlobalSecondaryIndexes") or [], table.get("LocalSecondaryIndexes") or []), ([], []))
    sse = table.get("SSEDescription", {})
    c.equal("SSE enabled with KMS", (sse.get("Status"), sse.get("SSEType")), ("ENABLED", "KMS"))
    c.check("SSE with the stack key (the orders topic's)", key_arn and sse.get("KMSMasterKeyArn") == key_arn,
            f"table {sse.get('KMSMasterKeyArn')!r}, topic {key_arn!r}")
    ttl = dynamodb.describe_time_to_live(TableName=table_name)["TimeToLiveDescription"]
    c.equal("TTL enabled on expires_at", (ttl.get("TimeToLiveStatus"), ttl.get("AttributeName")), ("ENABLED", "expires_at"))
    backups = dynamodb.describe_continuous_backups(TableName=table_name)["ContinuousBackupsDescription"]
    c.equal("point-in-time recovery enabled",
            backups.get("PointInTimeRecoveryDescription", {}).get("PointInTimeRecoveryStatus"), "ENABLED")
    c.equal("deletion protection off (ledger_deletion_protection defaults to false)", table.get("DeletionProtectionEnabled"), False)
    tags = {t["Key"]: t["Value"] for t in dynamodb.list_tags_of_resource(ResourceArn=table_arn).get("Tags", [])}
    c.equal("tagged like the rest of the stack", {k: tags.get(k) for k in ("Project", "ManagedBy", "Name")},
            {"Project": cluster, "ManagedBy": "terraform", "Name": f"{cluster}-orders"})
    # moto checks no IAM: this shows the table takes the ledger's conditional create, not who may.
    item = {"order_id": {"S": str(uuid.uuid4())}, "expires_at": {"N": str(int(time.time()) + LEDGER_RETENTION_DAYS * 86400)}}
    try:
        dynamodb.put_item(TableName=table_name, Item=item, ConditionExpression="attribute_not_exists(order_id)")
        try:
            dynamodb.put_item(TableName=table_name, Item=item, ConditionExpression="attribute_not_exists(order_id)")
            second = "accepted"
        except dynamodb.exceptions.ConditionalCheckFailedException:
            second = "ConditionalCheckFailedException"
        c.equal("a second conditional create of the same order_id is refused", second, "ConditionalCheckFailedException")
        read = dynamodb.get_item(TableName=table_name, Key={"order_id": item["order_id"]}, ConsistentRead=True).get("Item")
        c.equal("the item reads back by order_id", read, item)
        dynamodb.delete_item(TableName=table_name, Key={"order_id": item["order_id"]})
    except ClientError as error:
        c.check("an order item keyed by order_id (S) can be written and read", False, str(error))

    print("  ecs: services, task definitions and their environment (apis.md names)")
    names = outputs["ecs_service_names"]
    services = {
        s["serviceName"]: s
        for s in ecs.describe_services(cluster=cluster, services=list(names.values()))["services"]
    }
    c.equal("both services exist", sorted(services), sorted(names.values()))
    ledger_env = {"ORDERS_TABLE": table_name, "LEDGER_RETENTION": f"{LEDGER_RETENTION_DAYS}days"}
    expected_env = {
        "receiver": {"PORT": "8080", "ORDERS_TOPIC_ARN": topic_arn, "LOG_FORMAT": "json", "PAYMENT_LATENCY": "3s", **ledger_env},
        "worker": {
            "PORT": "8081",
            "ORDERS_QUEUE_URL": queue_url,
            "ORDERS_DLQ_URL": dlq_url,
            "WORKER_CONSUMERS": "10",
            "GATE_MODE": "per-consumer",
            "VISIBILITY_TIMEOUT": queue["VisibilityTimeout"] + "s",
            "MAX_RECEIVE_COUNT": str(max_receive_count),
            "LOG_FORMAT": "json",
            "PAYMENT_LATENCY": "3s",
            **ledger_env,
        },
    }
    role_arns = {}
    containers = {}
    for service, name in names.items():
        if name not in services:
            continue
        ecs_service = services[name]
        c.equal(
            f"{service}: no public IP",
            ecs_service["networkConfiguration"]["awsvpcConfiguration"].get("assignPublicIp"),
            "DISABLED",
        )
        task = ecs.describe_task_definition(taskDefinition=ecs_service["taskDefinition"])["taskDefinition"]
        role_arns[service] = task.get("taskRoleArn")
        c.check(f"{service}: own task role, separate from the execution role",
                task.get("taskRoleArn") and task.get("taskRoleArn") != task.get("executionRoleArn"))
        c.equal(f"{service}: Fargate 256 CPU / 512 MB", (task.get("cpu"), task.get("memory")), ("256", "512"))
        container = task["containerDefinitions"][0]
        env = {pair["name"]: pair["value"] for pair in container.get("environment", [])}
        for key, value in expected_env[service].items():
            c.equal(f"{service}: env {key}", env.get(key), value)
        c.equal(
            f"{service}: container health check runs the binary's --check-health",
            container.get("healthCheck", {}).get("command"),
            ["CMD", f"/usr/local/bin/{service}", "--check-health"],
        )
        c.equal(f"{service}: port mapping", [p["containerPort"] for p in container["portMappings"]], [int(env.get("PORT", 0))])
        c.equal(f"{service}: awslogs", container.get("logConfiguration", {}).get("logDriver"), "awslogs")
        c.check(f"{service}: read-only root filesystem", container.get("readonlyRootFilesystem") is True)
        containers[service] = container

    print("  alb: target group on /health, listener on 80")
    receiver = services.get(names["receiver"], {})
    balancers = receiver.get("loadBalancers", [])
    c.equal("receiver registered behind both target groups on 8080",
            [(b["containerName"], b["containerPort"]) for b in balancers], [("receiver", 8080)] * 2)
    groups = {g["TargetGroupName"]: g for g in elbv2.describe_target_groups(TargetGroupArns=[b["targetGroupArn"] for b in balancers])["TargetGroups"]} if balancers else {}
    c.equal("target groups: default and POST /orders/async", sorted(groups), sorted([f"{cluster}-receiver", f"{cluster}-async"]))
    delays = {}
    for name, found in groups.items():
        attributes_of = {a["Key"]: a["Value"] for a in elbv2.describe_target_group_attributes(TargetGroupArn=found["TargetGroupArn"])["Attributes"]}
        delays[name] = attributes_of.get("deregistration_delay.timeout_seconds")
        c.equal(f"{name}: health check /health on 8080, ip targets",
                (found.get("HealthCheckPath"), found.get("Port"), found.get("TargetType")), ("/health", 8080, "ip"))

    print("  budgets: stopTimeout and deregistration delay cover the services' deadlines")
    check_budgets(c, containers, delays)
    budget = outputs["worker_stop_budget"]
    graces = worker_graces()
    c.equal("Terraform's worker graces are worker/src/lib.rs's RELEASE_GRACE and FLUSH_GRACE",
            (budget.get("release_grace"), budget.get("flush_grace")), (graces["RELEASE_GRACE"], graces["FLUSH_GRACE"]))
    c.equal("worker: SHUTDOWN_DEADLINE is worker_shutdown_deadline_seconds (default)",
            seconds({p["name"]: p["value"] for p in containers.get("worker", {}).get("environment", [])}.get("SHUTDOWN_DEADLINE")),
            SHUTDOWN_DEADLINE_SECONDS)
    c.equal("receiver: SYNC_TIMEOUT is receiver_sync_timeout_seconds (default)",
            seconds({p["name"]: p["value"] for p in containers.get("receiver", {}).get("environment", [])}.get("SYNC_TIMEOUT")),
            SYNC_TIMEOUT_SECONDS)

    print("  ecs: both Fargate capacity providers on the cluster")
    found = ecs.describe_clusters(clusters=[cluster])["clusters"][0]
    c.equal("cluster capacity providers FARGATE and FARGATE_SPOT", sorted(found.get("capacityProviders", [])), ["FARGATE", "FARGATE_SPOT"])
    c.equal("cluster default strategy: regular Fargate", [(s["capacityProvider"], s.get("weight")) for s in found.get("defaultCapacityProviderStrategy", [])],
            [("FARGATE", 1)])

    print("  ecr: lifecycle rules never expire a tagged image")
    for repository in ecr.describe_repositories()["repositories"]:
        name = repository["repositoryName"]
        rules = json.loads(ecr.get_lifecycle_policy(repositoryName=name)["lifecyclePolicyText"])["rules"]
        c.check(f"{name}: has a lifecycle policy", bool(rules))
        c.equal(f"{name}: every expiring rule selects untagged images only",
                sorted({r["selection"]["tagStatus"] for r in rules if r["action"]["type"] == "expire"}), ["untagged"])
    if balancers:
        # The default target group; the listener rule sends only POST /orders/async to the other.
        group = groups.get(f"{cluster}-receiver") or elbv2.describe_target_groups(TargetGroupArns=[balancers[0]["targetGroupArn"]])["TargetGroups"][0]
        c.equal("target group health check path", group.get("HealthCheckPath"), "/health")
        c.equal("target group port and type", (group.get("Port"), group.get("TargetType")), (8080, "ip"))
        listeners = elbv2.describe_listeners(LoadBalancerArn=group["LoadBalancerArns"][0])["Listeners"]
        c.equal(
            "listener 80 forwards to the receiver",
            [(l["Port"], l["DefaultActions"][0].get("TargetGroupArn")) for l in listeners],
            [(80, group["TargetGroupArn"])],
        )
        c.check("alb_url output names the ALB", outputs["alb_url"].startswith("http://"), outputs["alb_url"])
        async_group = groups.get(f"{cluster}-async", {})
        rules = [r for r in elbv2.describe_rules(ListenerArn=listeners[0]["ListenerArn"])["Rules"] if not r.get("IsDefault")] if listeners else []
        c.equal("one listener rule: POST /orders/async to its own target group",
                [(sorted((cond["Field"], tuple((cond.get("PathPatternConfig") or cond.get("HttpRequestMethodConfig") or {}).get("Values", [])))
                         for cond in r["Conditions"]),
                  [(a["Type"], a.get("TargetGroupArn")) for a in r["Actions"]]) for r in rules],
                [([("http-request-method", ("POST",)), ("path-pattern", ("/orders/async",))],
                  [("forward", async_group.get("TargetGroupArn"))])])

    print("  iam: least privilege of the task roles")

    def statements_of(role_arn):
        role = role_arn.split("/")[-1]
        found = []
        for policy in iam.list_role_policies(RoleName=role)["PolicyNames"]:
            document = iam.get_role_policy(RoleName=role, PolicyName=policy)["PolicyDocument"]
            document = json.loads(document) if isinstance(document, str) else document
            found += document["Statement"]
        c.equal(f"{role}: no managed policies", iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"], [])
        return found

    def resources_for(statements, *actions):
        """Resources of the statements granting exactly these actions (any order)."""
        return [s["Resource"] for s in statements if sorted(as_list(s.get("Action"))) == sorted(actions)]

    role_statements = {service: statements_of(arn) for service, arn in role_arns.items()}
    for service, statements in role_statements.items():
        c.equal(f"{service}: DynamoDB actions exactly {sorted(LEDGER_ACTIONS[service])}",
                sorted(dynamodb_actions(statements)), sorted(LEDGER_ACTIONS[service]))
        c.equal(f"{service}: no Scan/Query/wildcard DynamoDB grant, and only on the table's ARN",
                dynamodb_problems(statements, table_arn), [])
        c.equal(f"{service}: the stack key only through DynamoDB, for the ledger",
                len(kms_via_dynamodb(statements, key_arn)), 1)
    if "receiver" in role_statements:
        statements = role_statements["receiver"]
        c.equal("receiver may only sns:Publish to the orders topic", resources_for(statements, "sns:Publish"), [topic_arn])
        c.equal("receiver has nothing but publish + the topic's KMS data key + the ledger and its key", len(statements), 4)
    if "worker" in role_statements:
        statements = role_statements["worker"]
        c.equal(
            "worker consumes only the orders queue",
            resources_for(statements, "sqs:ChangeMessageVisibility", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ReceiveMessage"),
            [queue["QueueArn"]],
        )
        c.equal("worker sends only to its DLQ", resources_for(statements, "sqs:GetQueueAttributes", "sqs:SendMessage"), [dlq["QueueArn"]])
        c.equal("worker has nothing but the queue, the DLQ, the ledger and its key", len(statements), 4)

    print("  iam: role names from name_prefix (unique per region), the topic policy")
    roles = [r["RoleName"] for r in iam.list_roles()["Roles"]]
    for role, prefix in ROLE_PREFIXES.items():
        matching = [name for name in roles if name.startswith(f"{cluster}-{prefix}")]
        c.check(f"{role} role: named {cluster}-{prefix}<unique suffix>",
                len(matching) == 1 and len(matching[0]) > len(f"{cluster}-{prefix}"), roles)
    if "receiver" in role_arns:
        check_topic_policy(c, json.loads(topic.get("Policy") or "{}"), topic_arn, role_arns["receiver"])

    print("  cloudwatch: alarms")
    alarms = {a["AlarmName"]: a for a in cloudwatch.describe_alarms(AlarmNamePrefix=cluster + "-")["MetricAlarms"]}

    def alarm(suffix):
        return alarms.get(f"{cluster}-{suffix}", {})

    def dimensions(found):
        return {d["Name"]: d["Value"] for d in found.get("Dimensions", [])}

    queue_name, dlq_name = queue["QueueArn"].split(":")[-1], dlq["QueueArn"].split(":")[-1]
    for level in ("warning", "critical"):
        found = alarm(f"orders-backlog-{level}")
        c.equal(f"backlog {level} alarm on the queue's visible messages",
                (found.get("MetricName"), dimensions(found)), ("ApproximateNumberOfMessagesVisible", {"QueueName": queue_name}))
    c.check("critical threshold above warning",
            alarm("orders-backlog-critical").get("Threshold", 0) > alarm("orders-backlog-warning").get("Threshold", 0))
    found = alarm("orders-oldest-message-age")
    c.equal("oldest message age alarm", (found.get("MetricName"), dimensions(found)), ("ApproximateAgeOfOldestMessage", {"QueueName": queue_name}))
    found = alarm("orders-dlq-not-empty")
    c.equal("DLQ not empty alarm: visible > 0 on the DLQ",
            (found.get("MetricName"), dimensions(found), found.get("Threshold"), found.get("ComparisonOperator")),
            ("ApproximateNumberOfMessagesVisible", {"QueueName": dlq_name}, 0.0, "GreaterThanThreshold"))
    undelivered_name = outputs["orders_undelivered_queue_url"].rstrip("/").split("/")[-1]
    found = alarm("orders-undelivered-not-empty")
    c.equal("subscription DLQ not empty alarm: visible > 0",
            (found.get("MetricName"), dimensions(found), found.get("Threshold"), found.get("ComparisonOperator")),
            ("ApproximateNumberOfMessagesVisible", {"QueueName": undelivered_name}, 0.0, "GreaterThanThreshold"))
    found = alarm("orders-delivery-failed")
    c.equal("SNS delivery failures alarm: NumberOfNotificationsFailed > 0 on the orders topic",
            (found.get("Namespace"), found.get("MetricName"), dimensions(found), found.get("Threshold")),
            ("AWS/SNS", "NumberOfNotificationsFailed", {"TopicName": topic_arn.split(":")[-1]}, 0.0))

    load_balancer = "app/" + "/".join(groups[f"{cluster}-receiver"]["LoadBalancerArns"][0].split("/")[-2:]) if f"{cluster}-receiver" in groups else None
    for kind, metric in (("target", "HTTPCode_Target_5XX_Count"), ("elb", "HTTPCode_ELB_5XX_Count")):
        found = alarm(f"alb-{kind}-5xx")
        c.equal(f"ALB {kind} 5xx alarm", (found.get("Namespace"), found.get("MetricName"), dimensions(found), found.get("Statistic")),
                ("AWS/ApplicationELB", metric, {"LoadBalancer": load_balancer}, "Sum"))
    for key, name in (("receiver", f"{cluster}-receiver"), ("async", f"{cluster}-async")):
        found = alarm(f"alb-{key}-unhealthy-hosts")
        group_suffix = groups.get(name, {}).get("TargetGroupArn", "").split(":")[-1]
        c.equal(f"unhealthy hosts alarm on target group {name}",
                (found.get("MetricName"), dimensions(found), found.get("Threshold"), found.get("ComparisonOperator")),
                ("UnHealthyHostCount", {"LoadBalancer": load_balancer, "TargetGroup": group_suffix}, 0.0, "GreaterThanThreshold"))

    def queries(found):
        return {q["Id"]: q for q in found.get("Metrics", [])}

    def stat_of(query):
        stat = query.get("MetricStat", {})
        metric = stat.get("Metric", {})
        return (metric.get("Namespace"), metric.get("MetricName"),
                {d["Name"]: d["Value"] for d in metric.get("Dimensions", [])}, stat.get("Stat"), stat.get("Period"))

    for service, name in names.items():
        found = alarm(f"{service}-tasks-below-desired")
        q = queries(found)
        dims = {"ClusterName": cluster, "ServiceName": name}
        c.equal(f"{service}: tasks below desired = desired - running (Container Insights) > 0",
                (q.get("missing", {}).get("Expression"), stat_of(q.get("desired", {}))[:3], stat_of(q.get("running", {}))[:3],
                 found.get("Threshold"), found.get("ComparisonOperator")),
                ("desired - running", ("ECS/ContainerInsights", "DesiredTaskCount", dims),
                 ("ECS/ContainerInsights", "RunningTaskCount", dims), 0.0, "GreaterThanThreshold"))

    print("  cloudwatch: SLO burn-rate windows of POST /orders/async (the composite pairs: plan-scaling)")
    budget = round(1 - SLO_TARGET_PERCENT / 100, 9)
    async_dims = {"LoadBalancer": load_balancer, "TargetGroup": groups.get(f"{cluster}-async", {}).get("TargetGroupArn", "").split(":")[-1]}
    for pair, ((long_window, short_window), factor) in BURN_PAIRS.items():
        for window, period in (("long", long_window), ("short", short_window)):
            found = alarm(f"slo-async-burn-{pair}-{window}")
            q = queries(found)
            c.check(f"{pair}-{window}: burn rate > {factor}x", abs(found.get("Threshold", 0) - factor) < 1e-9, found.get("Threshold"))
            c.equal(f"{pair}-{window}: burn rate = error ratio / {budget} (the budget of {SLO_TARGET_PERCENT}%)",
                    q.get("burn_rate", {}).get("Expression"), f"IF(bad > 0, bad / MAX([FILL(requests, 0), bad]), 0) / {budget:g}")
            c.equal(f"{pair}-{window}: the async target group's requests, 5xx and > 1 s responses over {period} s, and the ALB's 5xx",
                    {i: stat_of(q.get(i, {})) for i in ("requests", "target_5xx", "slow", "elb_5xx")},
                    {"requests": ("AWS/ApplicationELB", "RequestCount", async_dims, "Sum", period),
                     "target_5xx": ("AWS/ApplicationELB", "HTTPCode_Target_5XX_Count", async_dims, "Sum", period),
                     "slow": ("AWS/ApplicationELB", "TargetResponseTime", async_dims, "TC(1:)", period),
                     "elb_5xx": ("AWS/ApplicationELB", "HTTPCode_ELB_5XX_Count", {"LoadBalancer": load_balancer}, "Sum", period)})
            c.equal(f"{pair}-{window}: only the burn rate is returned", [i for i, m in q.items() if m.get("ReturnData")], ["burn_rate"])
    slo = outputs["slo_async"]
    c.check("SLO output: 43.2 minutes of error budget per 30 days at 99.9%",
            abs(slo.get("error_budget_minutes", 0) - 43.2) < 1e-9, slo)
    c.exit()


# --- binaries: the real receiver and worker, configured exactly as ECS would configure them -----


def task_container(ecs, cluster, service):
    """The service's container definition (its environment, its stopTimeout), read back from the task
    definition ECS runs."""
    ecs_service = ecs.describe_services(cluster=cluster, services=[service])["services"][0]
    task = ecs.describe_task_definition(taskDefinition=ecs_service["taskDefinition"])["taskDefinition"]
    return task["containerDefinitions"][0]


def free_port():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def binaries(outputs_path, endpoint, receiver_binary, worker_binary):
    """Runs both binaries against the moto stack with their task definitions' environment. Only what a
    laptop needs differs from ECS: the AWS endpoint and test keys, and a free loopback port."""
    import os
    import signal
    import subprocess
    import urllib.error
    import urllib.request

    import boto3

    outputs = {key: value["value"] for key, value in json.load(open(outputs_path)).items()}
    session = boto3.Session(aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1")
    ecs, sqs = session.client("ecs", endpoint_url=endpoint), session.client("sqs", endpoint_url=endpoint)
    cluster, names = outputs["ecs_cluster_name"], outputs["ecs_service_names"]
    queue_url = outputs["orders_queue_url"]
    c = Checks()
    local = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
        "BIND_ADDR": "127.0.0.1",
    }
    containers = {service: task_container(ecs, cluster, names[service]) for service in ("receiver", "worker")}
    env = {service: {**{p["name"]: p["value"] for p in containers[service]["environment"]}, **local, "PORT": str(free_port()), "ADMIN_PORT": str(free_port())}
           for service in ("receiver", "worker")}
    binary = {"receiver": receiver_binary, "worker": worker_binary}
    running = {}

    def health_check(service):
        """The container health check, verbatim: the binary with --check-health."""
        return subprocess.run([binary[service], "--check-health"], env=env[service], capture_output=True, timeout=10).returncode

    def wait_healthy(service):
        for _ in range(50):
            if running[service].poll() is not None:
                return False
            if health_check(service) == 0:
                return True
            time.sleep(0.2)
        return False

    def get_json(service, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{env[service]['PORT']}{path}", timeout=5) as response:
            return json.load(response)

    def log_path(service):
        return f"{os.path.dirname(os.path.abspath(outputs_path))}/{service}.log"

    def start(service):
        log = open(log_path(service), "w")
        running[service] = subprocess.Popen([binary[service]], env=env[service], stdout=log, stderr=subprocess.STDOUT)

    try:
        print("  receiver: task-definition environment, health check, an order to the created topic")
        c.equal("worker --check-health fails while nothing listens", health_check("worker"), 1)
        start("receiver")
        c.check("receiver --check-health passes", wait_healthy("receiver"), f"see {log_path('receiver')}")
        order = json.dumps({"customer_id": 4242, "items": [{"product_id": "PROD-001", "quantity": 2, "price": 49.99}]})
        request = urllib.request.Request(
            f"http://127.0.0.1:{env['receiver']['PORT']}/orders/async",
            data=order.encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status = response.status
        except urllib.error.HTTPError as error:
            status = error.code
        c.equal("POST /orders/async answers 202", status, 202)

        print("  worker: task-definition environment, health check, the order settled")
        start("worker")
        c.check("worker --check-health passes", wait_healthy("worker"), f"see {log_path('worker')}")
        settled = 0
        for _ in range(60):  # one payment takes PAYMENT_LATENCY (3 s)
            stats = get_json("worker", "/stats")
            settled = stats.get("completed", 0) + stats.get("declined", 0)
            if settled:
                break
            time.sleep(0.5)
        c.equal("the worker settled the order from the created queue", settled, 1)
        counts = sqs.get_queue_attributes(
            QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        )["Attributes"]
        c.equal("the queue is empty afterwards", counts, {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "0"})

        print("  shutdown: SIGTERM, as ECS stops a task")
        for service, process in running.items():
            process.send_signal(signal.SIGTERM)
        for service, process in running.items():
            stop_timeout = containers[service].get("stopTimeout", 30)  # ECS's default when unset
            try:
                code = process.wait(timeout=stop_timeout)
            except subprocess.TimeoutExpired:
                code = f"still running after {stop_timeout} s (its task definition's stopTimeout)"
            c.equal(f"{service} exits 0 within its {stop_timeout} s stop timeout", code, 0)
    finally:
        for process in running.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    c.exit()


# --- plans -----------------------------------------------------------------------------------


def changes_by_action(plan):
    """{address: change} for every resource whose plan is not a no-op."""
    return {rc["address"]: rc for rc in plan["resource_changes"] if rc["change"]["actions"] not in (["no-op"], ["read"])}


def prior_values(plan, address):
    for resource in plan.get("prior_state", {}).get("values", {}).get("root_module", {}).get("resources", []):
        if resource["address"] == address:
            return resource["values"]
    return {}


def check_updates(c, changes, expected=None):
    """Every in-place update changes only attributes moto does not round-trip, or those `expected`
    names for its address ({address: {attribute, ...}})."""
    expected = expected or {}
    for address, rc in changes.items():
        if rc["change"]["actions"] != ["update"]:
            continue
        before, after = rc["change"]["before"], rc["change"]["after"]
        changed = {key for key in set(before) | set(after) if before.get(key) != after.get(key) and key != "tags_all"}
        allowed = MOTO_ROUND_TRIP_GAPS.get(rc["type"], set()) | expected.get(address, set())
        real = changed - allowed
        if "redrive_policy" in changed and json.loads(before.get("redrive_policy") or "{}") != json.loads(after.get("redrive_policy") or "{}"):
            real.add("redrive_policy")
        c.check(f"no change on {address} beyond {sorted(changed & allowed)}", not real, sorted(real))


def plan_scaling(plan_path):
    plan = json.load(open(plan_path))
    variables = {key: value["value"] for key, value in plan["variables"].items()}
    changes = changes_by_action(plan)
    c = Checks()
    expected_creates = {
        "aws_appautoscaling_target.worker[0]",
        "aws_appautoscaling_policy.worker_backlog_per_task[0]",
        "aws_sqs_queue_redrive_allow_policy.orders_dlq",
        'aws_cloudwatch_composite_alarm.slo_async_burn["fast"]',
        'aws_cloudwatch_composite_alarm.slo_async_burn["slow"]',
    }
    creates = {a for a, rc in changes.items() if rc["change"]["actions"] == ["create"]}
    c.equal("creates exactly the autoscaling target, its policy, the DLQ redrive-allow policy and the SLO's composite alarms",
            creates, expected_creates)
    others = {a: rc["change"]["actions"] for a, rc in changes.items() if a not in expected_creates}
    c.equal("nothing is destroyed or replaced", {a: x for a, x in others.items() if x != ["update"]}, {})
    check_updates(c, changes)

    for pair in BURN_PAIRS:
        composite = changes.get(f'aws_cloudwatch_composite_alarm.slo_async_burn["{pair}"]', {}).get("change", {}).get("after", {})
        name = prior_values(plan, f'aws_cloudwatch_metric_alarm.slo_async_burn["{pair}-long"]').get("alarm_name", "?")
        c.equal(f"SLO {pair} pair: ALARM(long window) AND ALARM(short window)", composite.get("alarm_rule"),
                f'ALARM("{name}") AND ALARM("{name[:-len("long")]}short")')

    target = changes.get("aws_appautoscaling_target.worker[0]", {}).get("change", {}).get("after", {})
    worker_service = prior_values(plan, "aws_ecs_service.worker")
    cluster = prior_values(plan, "aws_ecs_cluster.main")
    orders = prior_values(plan, "aws_sqs_queue.orders")
    dlq = prior_values(plan, "aws_sqs_queue.orders_dlq")
    c.equal("scalable target is the worker service's desired count",
            (target.get("service_namespace"), target.get("scalable_dimension"), target.get("resource_id")),
            ("ecs", "ecs:service:DesiredCount", f"service/{cluster.get('name')}/{worker_service.get('name')}"))
    c.equal("min/max tasks from variables", (target.get("min_capacity"), target.get("max_capacity")),
            (variables["worker_min_count"], variables["worker_max_count"]))

    policy = changes.get("aws_appautoscaling_policy.worker_backlog_per_task[0]", {}).get("change", {}).get("after", {})
    c.equal("policy type", policy.get("policy_type"), "TargetTrackingScaling")
    tracking = (policy.get("target_tracking_scaling_policy_configuration") or [{}])[0]
    expected_target = variables["acceptable_latency_seconds"] * variables["worker_consumers"] / variables["payment_latency_seconds"]
    c.equal("target = acceptable latency x consumers / processing time", tracking.get("target_value"), expected_target)
    metrics = {m["id"]: m for m in (tracking.get("customized_metric_specification") or [{}])[0].get("metrics", [])}

    def metric(identifier):
        stat = (metrics.get(identifier, {}).get("metric_stat") or [{}])[0]
        found = (stat.get("metric") or [{}])[0]
        dims = {d["name"]: d["value"] for d in found.get("dimensions", [])}
        return found.get("namespace"), found.get("metric_name"), dims

    c.equal("metric 'visible': the orders queue's visible messages", metric("visible"),
            ("AWS/SQS", "ApproximateNumberOfMessagesVisible", {"QueueName": orders.get("name")}))
    c.equal("metric 'tasks': running worker tasks (Container Insights)", metric("tasks"),
            ("ECS/ContainerInsights", "RunningTaskCount", {"ClusterName": cluster.get("name"), "ServiceName": worker_service.get("name")}))
    c.equal("expression: backlog per task = visible / tasks", metrics.get("backlog_per_task", {}).get("expression"), "visible / tasks")
    c.equal("only the expression is returned", sorted(i for i, m in metrics.items() if m.get("return_data")), ["backlog_per_task"])

    allow = changes.get("aws_sqs_queue_redrive_allow_policy.orders_dlq", {}).get("change", {}).get("after", {})
    c.equal("redrive-allow is set on the DLQ", allow.get("queue_url"), dlq.get("url"))
    c.equal("only the orders queue may redrive into the DLQ", json.loads(allow.get("redrive_allow_policy", "{}")),
            {"redrivePermission": "byQueue", "sourceQueueArns": [orders.get("arn")]})
    c.exit()


def plan_variants(plan_path):
    plan = json.load(open(plan_path))
    changes = changes_by_action(plan)
    c = Checks()

    def with_action(action):
        return {a for a, rc in changes.items() if rc["change"]["actions"] == action}

    created = with_action(["create"])
    endpoints = {a for a in created if a.startswith("aws_vpc_endpoint.interface[")}
    c.equal("interface endpoints for ECR, Logs, SNS, SQS",
            {a.split('"')[1] for a in endpoints}, {"ecr.api", "ecr.dkr", "logs", "sns", "sqs"})
    c.check("S3 gateway endpoint for ECR layers", "aws_vpc_endpoint.s3[0]" in created, sorted(created))
    c.check("endpoint security group", "aws_security_group.endpoints[0]" in created, sorted(created))
    c.equal("NAT gateway, its address and route go", with_action(["delete"]) & {"aws_nat_gateway.main[0]", "aws_eip.nat[0]", "aws_route.private_nat[0]"},
            {"aws_nat_gateway.main[0]", "aws_eip.nat[0]", "aws_route.private_nat[0]"})
    https = changes.get("aws_lb_listener.https[0]", {}).get("change", {}).get("after", {})
    c.equal("HTTPS listener on 443 with a TLS 1.2+ policy", (https.get("port"), https.get("protocol"), https.get("ssl_policy")),
            (443, "HTTPS", "ELBSecurityPolicy-TLS13-1-2-2021-06"))
    http = changes.get("aws_lb_listener.http", {}).get("change", {}).get("after", {})
    action = (http.get("default_action") or [{}])[0]
    redirect = (action.get("redirect") or [{}])[0]
    c.equal("port 80 redirects to HTTPS", (action.get("type"), redirect.get("protocol"), redirect.get("port")), ("redirect", "HTTPS", "443"))
    c.check("ALB security group opens 443", any(a.startswith('aws_vpc_security_group_ingress_rule.alb_from_clients["443-') for a in created))
    dynamodb_endpoint = changes.get("aws_vpc_endpoint.dynamodb[0]", {}).get("change", {}).get("after", {})
    c.equal("DynamoDB gateway endpoint for the ledger, on the private route table",
            (dynamodb_endpoint.get("vpc_endpoint_type"), dynamodb_endpoint.get("service_name"), dynamodb_endpoint.get("route_table_ids")),
            ("Gateway", f"com.amazonaws.{plan['variables']['aws_region']['value']}.dynamodb",
             [prior_values(plan, "aws_route_table.private").get("id")]))
    c.exit()


def replaced(rc):
    return sorted(rc["change"]["actions"]) == ["create", "delete"]


def plan_rollback(plan_path):
    plan = json.load(open(plan_path))
    tag = plan["variables"]["image_tag"]["value"]
    changes = changes_by_action(plan)
    c = Checks()
    definitions = [f'aws_ecs_task_definition.service["{service}"]' for service in ("receiver", "worker")]
    services = ["aws_ecs_service.receiver", "aws_ecs_service.worker"]
    c.check("changes the two task definitions and the two services", set(definitions + services) <= set(changes), sorted(changes))
    c.equal("replaces nothing but the two task definitions, updates nothing but the services (beyond moto's gaps, below)",
            sorted(a for a, rc in changes.items() if a not in definitions + services and rc["change"]["actions"] != ["update"]), [])
    for address in definitions:
        rc = changes.get(address, {"change": {"actions": []}})
        c.check(f"{address}: replaced (a new revision)", replaced(rc), rc["change"]["actions"])
        before = json.loads((rc["change"].get("before") or {}).get("container_definitions") or "[{}]")[0].get("image", "")
        after = json.loads((rc["change"].get("after") or {}).get("container_definitions") or "[{}]")[0].get("image", "")
        c.check(f"{address}: image tag {before.rsplit(':', 1)[-1]!r} -> {tag!r}, same repository",
                after.endswith(f":{tag}") and before.rsplit(":", 1)[0] == after.rsplit(":", 1)[0] and before != after, (before, after))
    for address in services:
        rc = changes.get(address, {"change": {"actions": []}})
        c.equal(f"{address}: updated in place (rolling deployment, not a new service)", rc["change"]["actions"], ["update"])
        c.check(f"{address}: moves to the new revision",
                "task_definition" in (rc["change"].get("after_unknown") or {}), rc["change"].get("after_unknown"))
    check_updates(c, changes, {address: {"task_definition"} for address in services})
    c.exit()


def plan_hardening(plan_path):
    plan = json.load(open(plan_path))
    variables = {key: value["value"] for key, value in plan["variables"].items()}
    resources = planned_resources(plan)
    changes = changes_by_action(plan)
    c = Checks()

    print("  the worker on Fargate Spot")
    spot = str(variables["worker_fargate_spot"]).lower() == "true"
    c.check("the plan turns worker_fargate_spot on", spot)
    worker = changes.get("aws_ecs_service.worker", {"change": {"actions": []}})
    c.equal("worker service: updated in place, not replaced", worker["change"]["actions"], ["update"])
    after = worker["change"].get("after") or {}
    c.equal("worker strategy: first task on FARGATE, the rest on FARGATE_SPOT",
            sorted((s["capacity_provider"], s["base"], s["weight"]) for s in after.get("capacity_provider_strategy", [])),
            [("FARGATE", 1, 0), ("FARGATE_SPOT", 0, 1)])
    c.equal("worker: force_new_deployment (what lets the strategy change in place)", after.get("force_new_deployment"), True)
    before = worker["change"].get("before") or {}
    c.equal("before: regular Fargate only", [(s["capacity_provider"], s["weight"]) for s in before.get("capacity_provider_strategy", [])],
            [("FARGATE", 1)])
    cluster = resources.get("aws_ecs_cluster_capacity_providers.main", {})
    c.equal("cluster: FARGATE and FARGATE_SPOT", sorted(cluster.get("capacity_providers", [])), ["FARGATE", "FARGATE_SPOT"])

    print("  budgets: stopTimeout and deregistration delay from their variables")
    containers = {}
    for service in ("receiver", "worker"):
        definition = resources.get(f'aws_ecs_task_definition.service["{service}"]', {})
        containers[service] = json.loads(definition.get("container_definitions") or "[{}]")[0]
    worker_env = {p["name"]: p["value"] for p in containers["worker"].get("environment", [])}
    receiver_env = {p["name"]: p["value"] for p in containers["receiver"].get("environment", [])}
    c.equal("worker: SHUTDOWN_DEADLINE from worker_shutdown_deadline_seconds",
            worker_env.get("SHUTDOWN_DEADLINE"), f"{variables['worker_shutdown_deadline_seconds']}s")
    c.equal("receiver: SYNC_TIMEOUT from receiver_sync_timeout_seconds",
            receiver_env.get("SYNC_TIMEOUT"), f"{variables['receiver_sync_timeout_seconds']}s")
    groups = {values.get("name"): values.get("deregistration_delay") for address, values in resources.items()
              if address.startswith("aws_lb_target_group.")}
    check_budgets(c, containers, groups)
    c.equal("worker stopTimeout is the sum of the worker_stop_budget output's parts", containers["worker"].get("stopTimeout"),
            sum(v for k, v in plan["planned_values"]["outputs"]["worker_stop_budget"]["value"].items() if k != "stop_timeout"))

    print("  the SLO alarms follow their variables")
    target, days = float(variables["slo_async_target_percent"]), float(variables["slo_window_days"])
    budget = round(1 - target / 100, 9)
    for pair, ((long_window, short_window), _) in BURN_PAIRS.items():
        share = {"fast": 0.02, "slow": 0.05}[pair]
        factor = share * days * 24 * 3600 / long_window
        for window, period in (("long", long_window), ("short", short_window)):
            alarm = resources.get(f'aws_cloudwatch_metric_alarm.slo_async_burn["{pair}-{window}"]', {})
            c.check(f"{pair}-{window}: threshold {factor:.4g}x ({share:.0%} of a {days:g}-day budget in {long_window // 3600} h)",
                    abs((alarm.get("threshold") or 0) - factor) < 1e-9, alarm.get("threshold"))
            expression = [q.get("expression") for q in alarm.get("metric_query", []) if q.get("id") == "burn_rate"]
            c.check(f"{pair}-{window}: divides by the error budget {budget:g}", expression and expression[0].endswith(f"/ {budget:g}"), expression)
            periods = sorted({q["metric"][0]["period"] for q in alarm.get("metric_query", []) if q.get("metric")})
            c.equal(f"{pair}-{window}: every metric over {period} s", periods, [period])
            stats = [q["metric"][0]["stat"] for q in alarm.get("metric_query", []) if q.get("metric") and q["metric"][0]["metric_name"] == "TargetResponseTime"]
            c.equal(f"{pair}-{window}: slow = responses above slo_async_latency_seconds", stats, [f"TC({variables['slo_async_latency_seconds']}:)"])
    c.check("SLO output: budget minutes = (100 - target)% of the window",
            abs(plan["planned_values"]["outputs"]["slo_async"]["value"]["error_budget_minutes"] - budget * days * 24 * 60) < 1e-6)

    print("  the load balancer reaches no operator path: /stats and /metrics are on the receiver's admin port")
    receiver_port, admin_port = receiver_env.get("PORT"), receiver_env.get("ADMIN_PORT")
    c.check("receiver: ADMIN_PORT set, and not its public PORT", admin_port and admin_port != receiver_port, (receiver_port, admin_port))
    target_ports = {address: str(values.get("port")) for address, values in resources.items()
                    if address.startswith("aws_lb_target_group.")}
    c.check("every target group forwards to the receiver's public PORT, none to ADMIN_PORT",
            target_ports and all(port == receiver_port for port in target_ports.values()), target_ports)
    mapped = [m.get("containerPort") for m in containers["receiver"].get("portMappings", [])]
    c.equal("receiver: only its public port is mapped", [str(p) for p in mapped], [receiver_port])

    print("  IAM: every role from a name_prefix; the orders topic's policy")
    configured = {r["address"]: r.get("expressions", {}) for r in plan["configuration"]["root_module"]["resources"]}
    roles = {a: e for a, e in configured.items() if a.startswith("aws_iam_role.")}
    c.equal("the stack's roles", sorted(roles), sorted(f"aws_iam_role.{role}" for role in ROLE_PREFIXES))
    for address, expressions in roles.items():
        c.check(f"{address}: name_prefix, no fixed name", "name_prefix" in expressions and "name" not in expressions, sorted(expressions))
        name = resources.get(address, {}).get("name", "")
        prefix = f"{variables['name']}-{ROLE_PREFIXES[address.split('.')[1]]}"
        c.check(f"{address}: {name} = {prefix}<suffix>, within IAM's 38-character prefix limit",
                name.startswith(prefix) and len(name) > len(prefix) and len(prefix) <= 38, name)
    policy = json.loads(resources.get("aws_sns_topic_policy.orders", {}).get("policy") or "{}")
    check_topic_policy(c, policy, resources.get("aws_sns_topic.orders", {}).get("arn"), resources.get("aws_iam_role.receiver", {}).get("arn"))

    expected = {
        "aws_ecs_service.worker": {"capacity_provider_strategy", "task_definition"},
        "aws_ecs_service.receiver": {"task_definition"},
        'aws_lb_target_group.receiver': {"deregistration_delay"},
        'aws_lb_target_group.receiver_async': {"deregistration_delay"},
    }
    expected.update({f'aws_cloudwatch_metric_alarm.slo_async_burn["{w}"]': {"threshold", "metric_query", "alarm_description"}
                     for w in ("fast-long", "fast-short", "slow-long", "slow-short")})
    c.equal("nothing else is replaced than the two task definitions",
            sorted(a for a, rc in changes.items() if rc["change"]["actions"] != ["update"]),
            sorted(f'aws_ecs_task_definition.service["{s}"]' for s in ("receiver", "worker")))
    check_updates(c, changes, expected)
    c.exit()


def planned_resources(plan):
    """{address: values} of every resource in the plan's planned state (root module), changed or not."""
    return {r["address"]: r.get("values", {}) for r in plan["planned_values"]["root_module"].get("resources", [])}


def plan_ledger(plan_path):
    plan = json.load(open(plan_path))
    variables = {key: value["value"] for key, value in plan["variables"].items()}
    # A -var on the command line reaches the plan's variables as the string it was typed as.
    protection = str(variables["ledger_deletion_protection"]).lower() == "true"
    retention_days = int(variables["ledger_retention_days"])
    resources = planned_resources(plan)
    changes = changes_by_action(plan)
    c = Checks()

    print("  the ledger table")
    table = resources.get("aws_dynamodb_table.orders", {})
    key_arn = resources.get("aws_kms_key.main", {}).get("arn")
    table_arn, table_name = table.get("arn"), table.get("name")
    c.check("the plan holds the table with its ARN (planned on the applied stack)", table_arn and key_arn, sorted(resources))
    c.equal("billing_mode PAY_PER_REQUEST", table.get("billing_mode"), "PAY_PER_REQUEST")
    c.equal("hash_key order_id, no range key", (table.get("hash_key"), table.get("range_key") or None), ("order_id", None))
    c.equal("attributes: order_id S only", [(a.get("name"), a.get("type")) for a in table.get("attribute", [])], [("order_id", "S")])
    c.equal("TTL enabled on expires_at", [(t.get("enabled"), t.get("attribute_name")) for t in table.get("ttl", [])], [(True, "expires_at")])
    c.equal("SSE enabled with the stack's KMS key",
            [(e.get("enabled"), e.get("kms_key_arn")) for e in table.get("server_side_encryption", [])], [(True, key_arn)])
    # moto reports PITR too (smoke checks DescribeContinuousBackups); this is the same setting in the plan.
    c.equal("point-in-time recovery enabled", [p.get("enabled") for p in table.get("point_in_time_recovery", [])], [True])
    c.equal("deletion protection follows ledger_deletion_protection",
            table.get("deletion_protection_enabled"), protection)
    table_change = changes.get("aws_dynamodb_table.orders", {}).get("change", {})
    if table_change:
        before, after = table_change.get("before") or {}, table_change.get("after") or {}
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k) and k != "tags_all")
        c.equal("the table changes in place, never replaced (an order ledger is not disposable)",
                (table_change.get("actions"), changed),
                (["update"], ["deletion_protection_enabled"] if protection else []))

    print("  IAM: DynamoDB least privilege in every role policy")
    roles = {service: resources.get(f"aws_iam_role.{service}", {}).get("name") for service in LEDGER_ACTIONS}
    by_role = {}
    for address, values in resources.items():
        if not address.startswith("aws_iam_role_policy."):
            continue
        if not c.check(f"{address}: policy known at plan time", values.get("policy"), "unknown"):
            continue
        by_role.setdefault(values.get("role"), []).extend(json.loads(values["policy"])["Statement"])
    everything = [statement for statements in by_role.values() for statement in statements]
    c.equal("no Scan/Query/dynamodb:* (or wider) grant; DynamoDB resources only the table's ARN",
            dynamodb_problems(everything, table_arn), [])
    for service, role in roles.items():
        c.equal(f"{service} task role: DynamoDB actions exactly {sorted(LEDGER_ACTIONS[service])}",
                sorted(dynamodb_actions(by_role.get(role, []))), sorted(LEDGER_ACTIONS[service]))
        c.equal(f"{service} task role: the stack key through DynamoDB only", len(kms_via_dynamodb(by_role.get(role, []), key_arn)), 1)
    c.equal("no other role has DynamoDB access",
            {role: sorted(dynamodb_actions(statements)) for role, statements in by_role.items()
             if role not in roles.values() and dynamodb_actions(statements)}, {})
    attachments = [a for a in resources if a.startswith(("aws_iam_role_policy_attachment.", "aws_iam_policy."))]
    c.equal("no managed policies (they would escape these checks)", attachments, [])
    key_policy = json.loads(resources.get("aws_kms_key.main", {}).get("policy") or '{"Statement": []}')
    dynamodb_service = [s for s in key_policy["Statement"] if s.get("Principal") == {"Service": "dynamodb.amazonaws.com"}]
    c.equal("key policy: DynamoDB itself may only read the key's metadata",
            [sorted(as_list(s.get("Action"))) for s in dynamodb_service], [["kms:Describe*", "kms:Get*", "kms:List*"]])

    print("  ECS: both task definitions name the table")
    for service in LEDGER_ACTIONS:
        definition = resources.get(f'aws_ecs_task_definition.service["{service}"]', {})
        containers = json.loads(definition.get("container_definitions") or "[{}]")
        env = {pair["name"]: pair["value"] for pair in containers[0].get("environment", [])}
        c.equal(f"{service}: ORDERS_TABLE is the ledger table", env.get("ORDERS_TABLE"), table_name)
        c.equal(f"{service}: LEDGER_RETENTION from ledger_retention_days (humantime)",
                env.get("LEDGER_RETENTION"), f"{retention_days}days")
    c.exit()


if __name__ == "__main__":
    commands = {
        "smoke": (smoke, 3),
        "binaries": (binaries, 4),
        "plan-scaling": (plan_scaling, 1),
        "plan-variants": (plan_variants, 1),
        "plan-ledger": (plan_ledger, 1),
        "plan-rollback": (plan_rollback, 1),
        "plan-hardening": (plan_hardening, 1),
    }
    if len(sys.argv) < 2 or sys.argv[1] not in commands or len(sys.argv) - 2 != commands[sys.argv[1]][1]:
        sys.exit(__doc__)
    function, _ = commands[sys.argv[1]]
    arguments = sys.argv[2:]
    if function is smoke:
        arguments[2] = int(arguments[2])
    function(*arguments)
