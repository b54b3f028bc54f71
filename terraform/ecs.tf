# ECS Fargate cluster with two services from one image: receiver (port 8080, behind the ALB) and
# worker (port 8081, health and metrics only). Env var names follow the binaries' clap `env = ...`.

resource "aws_ecs_cluster" "main" {
  name = var.name

  # Container Insights publishes RunningTaskCount (the backlog-per-task scaling metric divides by it)
  # and DesiredTaskCount (the tasks-below-desired alarms compare the two).
  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

# Both Fargate capacity providers, so the worker can run on Spot (var.worker_fargate_spot). Services
# without a strategy of their own (the receiver, with launch_type) get regular Fargate.
resource "aws_ecs_cluster_capacity_providers" "main" {
  cluster_name       = aws_ecs_cluster.main.name
  capacity_providers = ["FARGATE", "FARGATE_SPOT"]

  default_capacity_provider_strategy {
    capacity_provider = "FARGATE"
    weight            = 1
  }
}

resource "aws_cloudwatch_log_group" "service" {
  for_each = local.services

  name              = "/ecs/${var.name}/${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.main.arn
}

locals {
  receiver_port = 8080
  # The receiver's /stats and /metrics: not mapped, not in any target group, so the load balancer never reaches
  # them (ECS Exec or a sidecar scraper inside the task can).
  receiver_admin_port = 9090
  worker_port         = 8081

  # Shutdown budgets. The worker, after SIGTERM, lets payments finish for SHUTDOWN_DEADLINE, then has
  # RELEASE_GRACE to give unfinished messages back and FLUSH_GRACE to flush its deletes (both constants
  # in worker/src/lib.rs, mirrored here and compared with it by scripts/deploy-checks.py). ECS sends
  # SIGKILL stopTimeout seconds after SIGTERM, so stopTimeout covers all three plus a margin.
  worker_stop_budget = {
    shutdown_deadline = var.worker_shutdown_deadline_seconds
    release_grace     = 3
    flush_grace       = 5
    margin            = 5
  }
  stop_timeout = {
    worker = sum(values(local.worker_stop_budget))
    # The receiver's own SHUTDOWN_DEADLINE (its default, 20 s) for in-flight requests and publishes.
    receiver = 30
  }
  # The ALB keeps sending a draining task's open requests to it this long before ECS stops the task:
  # the longest request is POST /orders/sync, which waits up to SYNC_TIMEOUT and then finishes the
  # payment it started (PAYMENT_LATENCY).
  receiver_deregistration_delay = var.receiver_sync_timeout_seconds + var.payment_latency_seconds + 2

  # Both binaries read these (see receiver/worker `--help`); LOG_FORMAT=json suits CloudWatch Logs Insights.
  common_environment = {
    AWS_REGION      = local.region
    LOG_FORMAT      = "json"
    PAYMENT_LATENCY = "${var.payment_latency_seconds}s"
    # The order ledger (ledger.tf): both services read and write their order's item.
    ORDERS_TABLE     = aws_dynamodb_table.orders.name
    LEDGER_RETENTION = "${var.ledger_retention_days}days" # humantime, like PAYMENT_LATENCY
  }

  environment = {
    receiver = merge(local.common_environment, {
      PORT             = tostring(local.receiver_port)
      ADMIN_PORT       = tostring(local.receiver_admin_port)
      ORDERS_TOPIC_ARN = aws_sns_topic.orders.arn
      # The target group's deregistration delay is derived from it (local.receiver_deregistration_delay).
      SYNC_TIMEOUT = "${var.receiver_sync_timeout_seconds}s"
    })
    worker = merge(local.common_environment, {
      PORT             = tostring(local.worker_port)
      ORDERS_QUEUE_URL = aws_sqs_queue.orders.id
      ORDERS_DLQ_URL   = aws_sqs_queue.orders_dlq.id
      WORKER_CONSUMERS = tostring(var.worker_consumers)
      # Each consumer owns a payment slot, so a task drains worker_consumers / payment latency
      # orders per second: the assumption behind the autoscaling target.
      GATE_MODE = "per-consumer"
      # The worker must know the queue's settings: it extends visibility before this runs out, and
      # dead-letters a failing message itself (with its reason) on the last receive SQS allows.
      VISIBILITY_TIMEOUT = "${var.queue_visibility_timeout_seconds}s"
      MAX_RECEIVE_COUNT  = tostring(var.max_receive_count)
      # The container's stopTimeout is derived from it (local.worker_stop_budget).
      SHUTDOWN_DEADLINE = "${var.worker_shutdown_deadline_seconds}s"
    })
  }

  task = {
    receiver = { port = local.receiver_port, cpu = var.receiver_cpu, memory = var.receiver_memory, role = aws_iam_role.receiver.arn }
    worker   = { port = local.worker_port, cpu = var.worker_cpu, memory = var.worker_memory, role = aws_iam_role.worker.arn }
  }
}

resource "aws_ecs_task_definition" "service" {
  for_each = local.task

  family                   = "${var.name}-${each.key}"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = each.value.cpu
  memory                   = each.value.memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = each.value.role

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  lifecycle {
    precondition {
      condition     = local.stop_timeout[each.key] <= 120
      error_message = "The ${each.key}'s stopTimeout (${local.stop_timeout[each.key]} s) exceeds Fargate's 120 s maximum."
    }
  }

  container_definitions = jsonencode([{
    name      = each.key
    image     = "${aws_ecr_repository.service[each.key].repository_url}:${var.image_tag}"
    essential = true

    portMappings = [{ containerPort = each.value.port, protocol = "tcp" }]
    environment  = [for key, value in local.environment[each.key] : { name = key, value = value }]

    # The binaries write nothing to disk.
    readonlyRootFilesystem = true
    # SIGTERM starts a graceful drain; SIGKILL follows after stopTimeout (local.stop_timeout).
    stopTimeout = local.stop_timeout[each.key]

    # No curl in the image: the binary itself GETs http://127.0.0.1:$PORT/health and exits 0 or 1.
    healthCheck = {
      command     = ["CMD", "/usr/local/bin/${each.key}", "--check-health"]
      interval    = 15
      timeout     = 5
      retries     = 3
      startPeriod = 10
    }

    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.service[each.key].name
        awslogs-region        = local.region
        awslogs-stream-prefix = each.key
      }
    }
  }])
}

resource "aws_ecs_service" "receiver" {
  name             = "${var.name}-receiver"
  cluster          = aws_ecs_cluster.main.id
  task_definition  = aws_ecs_task_definition.service["receiver"].arn
  desired_count    = var.receiver_desired_count
  launch_type      = "FARGATE"
  platform_version = "LATEST"

  # Let new tasks pass the container health check before the ALB judges them.
  health_check_grace_period_seconds = 30

  network_configuration {
    subnets          = aws_subnet.private[*].id
    security_groups  = [aws_security_group.receiver.id]
    assign_public_ip = false
  }

  # Every task serves both target groups: the default one, and the one only POST /orders/async
  # reaches (alb.tf), whose metrics measure the async accept path's SLO.
  dynamic "load_balancer" {
    for_each = [aws_lb_target_group.receiver.arn, aws_lb_target_group.receiver_async.arn]
    content {
      target_group_arn = load_balancer.value
      container_name   = "receiver"
      container_port   = local.receiver_port
    }
  }

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  depends_on = [aws_lb_listener.http]
}

resource "aws_ecs_service" "worker" {
  name             = "${var.name}-worker"
  cluster          = aws_ecs_cluster.main.id
  task_definition  = aws_ecs_task_definition.service["worker"].arn
  desired_count    = var.worker_desired_count
  platform_version = "LATEST"

  # Always a strategy (never launch_type), so turning worker_fargate_spot on or off is an in-place
  # update: the provider replaces a service whose strategy changes unless force_new_deployment is set
  # and the strategy is non-empty both before and after. With Spot, the first task (base) stays on
  # regular Fargate so one worker keeps draining even when Spot capacity runs out.
  dynamic "capacity_provider_strategy" {
    for_each = var.worker_fargate_spot ? {
      FARGATE      = { base = 1, weight = 0 }
      FARGATE_SPOT = { base = 0, weight = 1 }
      } : {
      FARGATE = { base = 0, weight = 1 }
    }
    content {
      capacity_provider = capacity_provider_strategy.key
      base              = capacity_provider_strategy.value.base
      weight            = capacity_provider_strategy.value.weight
    }
  }
  force_new_deployment = true

  network_configuration {
    subnets          = aws_subnet.private[*].id
    security_groups  = [aws_security_group.worker.id]
    assign_public_ip = false
  }

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  # Autoscaling changes the count at run time; a later apply must not reset it.
  lifecycle {
    ignore_changes = [desired_count]
  }

  # The capacity providers must be on the cluster before a strategy names them.
  depends_on = [aws_ecs_cluster_capacity_providers.main]
}

# --- Security groups: the ALB reaches the receiver on 8080; tasks only talk HTTPS to AWS APIs. --

resource "aws_security_group" "receiver" {
  name        = "${var.name}-receiver"
  description = "Receiver tasks: HTTP from the ALB, HTTPS out to AWS APIs"
  vpc_id      = aws_vpc.main.id

  tags = { Name = "${var.name}-receiver" }
}

resource "aws_vpc_security_group_ingress_rule" "receiver_from_alb" {
  security_group_id            = aws_security_group.receiver.id
  description                  = "HTTP from the ALB"
  ip_protocol                  = "tcp"
  from_port                    = local.receiver_port
  to_port                      = local.receiver_port
  referenced_security_group_id = aws_security_group.alb.id
}

resource "aws_security_group" "worker" {
  name        = "${var.name}-worker"
  description = "Worker tasks: no inbound traffic, HTTPS out to AWS APIs"
  vpc_id      = aws_vpc.main.id

  tags = { Name = "${var.name}-worker" }
}

resource "aws_vpc_security_group_egress_rule" "tasks_https" {
  for_each = { receiver = aws_security_group.receiver.id, worker = aws_security_group.worker.id }

  security_group_id = each.value
  description       = "HTTPS to AWS APIs (ECR, CloudWatch Logs, SNS, SQS, DynamoDB) via NAT or VPC endpoints"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}
