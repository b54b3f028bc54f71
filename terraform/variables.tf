# Inputs of the orderflow stack. Every variable but image_tag has a default that deploys the lab setup
# (one receiver, one worker, 256 CPU / 512 MB tasks); the README lists the ones worth changing.

# --- General -----------------------------------------------------------------------------------

variable "aws_region" {
  description = "AWS region to deploy into."
  type        = string
  default     = "us-east-1"
}

variable "name" {
  description = "Name prefix for every resource (cluster, services, queues, roles). Lowercase letters, digits and dashes."
  type        = string
  default     = "orderflow"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,22}$", var.name))
    error_message = "name must be 2-23 characters of lowercase letters, digits and dashes (the ALB and target group names add suffixes up to the 32-character limit)."
  }
}

variable "tags" {
  description = "Extra tags for every resource, merged over Project and ManagedBy."
  type        = map(string)
  default     = {}
}

# --- Network -----------------------------------------------------------------------------------

variable "vpc_cidr" {
  description = "CIDR block of the VPC."
  type        = string
  default     = "10.0.0.0/16"
}

variable "public_subnet_cidrs" {
  description = "CIDR blocks of the two public subnets (ALB, NAT gateway), one per availability zone."
  type        = list(string)
  default     = ["10.0.1.0/24", "10.0.2.0/24"]

  validation {
    condition     = length(var.public_subnet_cidrs) == 2
    error_message = "Give exactly two public subnets: an ALB needs two availability zones."
  }
}

variable "private_subnet_cidrs" {
  description = "CIDR blocks of the two private subnets (ECS tasks), one per availability zone."
  type        = list(string)
  default     = ["10.0.10.0/24", "10.0.11.0/24"]

  validation {
    condition     = length(var.private_subnet_cidrs) == 2
    error_message = "Give exactly two private subnets, one per availability zone."
  }
}

variable "egress_mode" {
  description = <<-EOT
    How tasks in the private subnets reach AWS APIs (ECR, CloudWatch Logs, SNS, SQS, DynamoDB).
    "nat": one NAT gateway (about $0.045/h + $0.045/GB processed + $0.005/h for its public IPv4);
    cheapest for this stack, and tasks can also reach the internet.
    "endpoints": interface endpoints for sns, sqs, ecr.api, ecr.dkr and logs in both AZs plus free S3 and
    DynamoDB gateway endpoints (5 x 2 x $0.01/h = $0.10/h + $0.01/GB); no internet path at all.
  EOT
  type        = string
  default     = "nat"

  validation {
    condition     = contains(["nat", "endpoints"], var.egress_mode)
    error_message = "egress_mode must be \"nat\" or \"endpoints\"."
  }
}

variable "flow_log_traffic_type" {
  description = "Which VPC traffic the flow log records (ACCEPT, REJECT or ALL). REJECT keeps log ingestion cost near zero while still showing blocked connections."
  type        = string
  default     = "REJECT"

  validation {
    condition     = contains(["ACCEPT", "REJECT", "ALL"], var.flow_log_traffic_type)
    error_message = "flow_log_traffic_type must be ACCEPT, REJECT or ALL."
  }
}

# --- Load balancer -----------------------------------------------------------------------------

variable "allowed_ingress_cidrs" {
  description = "Client CIDR blocks allowed to reach the ALB. The default is the whole internet; narrow it to your office or load-test machine."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "certificate_arn" {
  description = "ACM certificate ARN for an HTTPS listener on 443. When set, port 80 redirects to HTTPS; when null, port 80 serves plain HTTP."
  type        = string
  default     = null
}

# --- Images and tasks --------------------------------------------------------------------------

# Required, on purpose: no default tag is guaranteed to exist in a fresh repository, and a task
# definition naming a missing tag only fails when ECS tries to pull it (the service then loops on
# failed task starts until the circuit breaker rolls back). Every apply names the release it deploys.
variable "image_tag" {
  description = "Image tag to run from both ECR repositories (required): the tag you pushed, e.g. the git commit. Tags are immutable, so a release is one tag; rolling back is an apply with the previous tag."
  type        = string

  validation {
    # ECR's tag syntax; "latest" is refused because it names no particular release to roll back to.
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.image_tag)) && var.image_tag != "latest"
    error_message = "image_tag must be the tag of a pushed release (1-128 of letters, digits, _ . -, not starting with . or -), and not \"latest\"."
  }
}

variable "ecr_force_delete" {
  description = "Let `terraform destroy` delete the ECR repositories even when they still hold images (convenient for a lab; set false in production)."
  type        = bool
  default     = true
}

variable "cpu_architecture" {
  description = "CPU architecture of the Fargate tasks; must match the pushed image (X86_64 for linux/amd64, ARM64 for linux/arm64, which is about 20% cheaper)."
  type        = string
  default     = "X86_64"

  validation {
    condition     = contains(["X86_64", "ARM64"], var.cpu_architecture)
    error_message = "cpu_architecture must be X86_64 or ARM64."
  }
}

variable "receiver_cpu" {
  description = "Fargate CPU units for a receiver task (256 = 0.25 vCPU, as in the lab)."
  type        = number
  default     = 256
}

variable "receiver_memory" {
  description = "Fargate memory (MiB) for a receiver task; must be a valid pairing with receiver_cpu."
  type        = number
  default     = 512
}

variable "worker_cpu" {
  description = "Fargate CPU units for a worker task (256 = 0.25 vCPU, as in the lab)."
  type        = number
  default     = 256
}

variable "worker_memory" {
  description = "Fargate memory (MiB) for a worker task; must be a valid pairing with worker_cpu."
  type        = number
  default     = 512
}

variable "receiver_desired_count" {
  description = "Number of receiver tasks behind the ALB."
  type        = number
  default     = 1
}

variable "worker_desired_count" {
  description = "Initial number of worker tasks. With autoscaling on, the scaling policy owns the count afterwards."
  type        = number
  default     = 1
}

variable "worker_consumers" {
  description = "Concurrent consumers per worker task (WORKER_CONSUMERS). Each handles one order per payment_latency_seconds, so a task drains worker_consumers / payment_latency_seconds orders per second."
  type        = number
  default     = 10

  validation {
    condition     = var.worker_consumers >= 1
    error_message = "worker_consumers must be at least 1."
  }
}

variable "payment_latency_seconds" {
  description = "Simulated payment gateway latency in seconds (PAYMENT_LATENCY); it is the processing time of one order."
  type        = number
  default     = 3

  validation {
    condition     = var.payment_latency_seconds > 0
    error_message = "payment_latency_seconds must be positive."
  }
}

variable "receiver_sync_timeout_seconds" {
  description = "The longest POST /orders/sync takes to answer (the receiver's SYNC_TIMEOUT): a payment that cannot finish within it gets a 504 instead. 9 s is 1 s under the usual 10 s client timeout and far under the ALB's 60 s idle timeout, so clients see the 504, never a dropped connection. The target group's deregistration delay is derived from it: sync timeout + payment_latency_seconds + a margin, so a draining task finishes its longest request."
  type        = number
  default     = 9

  validation {
    condition     = var.receiver_sync_timeout_seconds >= 1 && floor(var.receiver_sync_timeout_seconds) == var.receiver_sync_timeout_seconds
    error_message = "receiver_sync_timeout_seconds must be a whole number of seconds, at least 1."
  }
}

variable "worker_shutdown_deadline_seconds" {
  description = "After SIGTERM, how long a worker lets in-flight payments finish (the worker's SHUTDOWN_DEADLINE). The container's stopTimeout is derived from it: deadline + the worker's release and flush graces (3 s + 5 s) + a margin; Fargate allows at most 120 s."
  type        = number
  default     = 25

  validation {
    # 120 s (Fargate's stopTimeout ceiling) - 3 s release grace - 5 s flush grace - 5 s margin.
    condition     = var.worker_shutdown_deadline_seconds >= 1 && var.worker_shutdown_deadline_seconds <= 107 && floor(var.worker_shutdown_deadline_seconds) == var.worker_shutdown_deadline_seconds
    error_message = "worker_shutdown_deadline_seconds must be a whole number from 1 to 107: with the worker's 8 s of graces and a 5 s margin, stopTimeout must stay within Fargate's 120 s."
  }
}

variable "worker_fargate_spot" {
  description = "Run the worker service on Fargate Spot (about 70% cheaper), keeping its first task on regular Fargate. Spot tasks can be reclaimed with a SIGTERM and a two-minute warning; the worker drains within its stopTimeout and gives unfinished orders back to the queue, so a reclaim delays orders but loses none. Off by default: Spot capacity is not guaranteed, least of all during the burst the scaling policy reacts to."
  type        = bool
  default     = false
}

variable "log_retention_days" {
  description = "Retention of the CloudWatch log groups (tasks and VPC flow log). Destroying the stack deletes the groups, so a long retention costs nothing after teardown."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a value CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, ... 365, ...)."
  }
}

# --- Messaging ---------------------------------------------------------------------------------

variable "queue_visibility_timeout_seconds" {
  description = "How long a received order stays hidden from other consumers. Must exceed the worst time a worker holds one message (payment latency plus retries); the default leaves 10x headroom over the 3 s gateway."
  type        = number
  default     = 30
}

variable "queue_retention_seconds" {
  description = "How long an unprocessed order stays in the main queue (4 days)."
  type        = number
  default     = 345600
}

variable "dlq_retention_seconds" {
  description = "How long a dead-lettered order stays in the DLQ (14 days, the SQS maximum). A moved message keeps its original enqueue time, so this must be longer than queue_retention_seconds."
  type        = number
  default     = 1209600
}

variable "queue_receive_wait_seconds" {
  description = "Long-poll wait of the main queue (20 s, the maximum): fewer empty receives, lower cost."
  type        = number
  default     = 20
}

variable "max_receive_count" {
  description = "Deliveries of one message before SQS moves it to the DLQ (poison messages stop blocking after this many attempts)."
  type        = number
  default     = 5

  validation {
    condition     = var.max_receive_count >= 1 && var.max_receive_count <= 1000
    error_message = "max_receive_count must be between 1 and 1000."
  }
}

# --- Order ledger (DynamoDB) -------------------------------------------------------------------

variable "ledger_retention_days" {
  description = "Days an order's ledger item lives after its last write: the services set its expires_at (TTL) this far ahead and get it as LEDGER_RETENTION. It must outlast the DLQ's retention (checked): a message redriven after its order's item expired would find no record of the charge and be charged again. 15 days covers the default 14-day DLQ."
  type        = number
  default     = 15

  validation {
    condition     = var.ledger_retention_days >= 1 && floor(var.ledger_retention_days) == var.ledger_retention_days
    error_message = "ledger_retention_days must be a whole number of days, at least 1."
  }
}

variable "ledger_deletion_protection" {
  description = "Turn on DynamoDB deletion protection for the ledger table. Off by default so `terraform destroy` removes the lab stack; turn it on for a long-lived deployment (destroy then fails until it is turned off again)."
  type        = bool
  default     = false
}

# --- Worker autoscaling ------------------------------------------------------------------------

variable "worker_autoscaling_enabled" {
  description = "Scale the worker service on backlog per task. Turn off to keep worker_desired_count fixed (the moto check does, since moto lacks Application Auto Scaling tagging)."
  type        = bool
  default     = true
}

variable "worker_min_count" {
  description = "Fewest worker tasks autoscaling keeps running."
  type        = number
  default     = 1
}

variable "worker_max_count" {
  description = "Most worker tasks autoscaling may run. With the defaults, 20 tasks x 10 consumers / 3 s = 66 orders/s, above the lab's 60 orders/s flash sale."
  type        = number
  default     = 20
}

variable "acceptable_latency_seconds" {
  description = "Longest an order should wait in the queue. The backlog-per-task target is acceptable_latency_seconds x worker_consumers / payment_latency_seconds (the AWS recipe: acceptable latency / processing time per message)."
  type        = number
  default     = 60
}

variable "scale_out_cooldown_seconds" {
  description = "Wait after a scale-out before the next one; short, because a growing backlog is urgent."
  type        = number
  default     = 60
}

variable "scale_in_cooldown_seconds" {
  description = "Wait after a scale-in before the next one; longer, to avoid flapping when a burst ends."
  type        = number
  default     = 300
}

# --- Alarms ------------------------------------------------------------------------------------

variable "backlog_warning_threshold" {
  description = "Visible messages in the main queue that raise the warning alarm (one worker task drains 200 per minute with the defaults)."
  type        = number
  default     = 500
}

variable "backlog_critical_threshold" {
  description = "Visible messages in the main queue that raise the critical alarm."
  type        = number
  default     = 2000
}

variable "oldest_message_age_threshold_seconds" {
  description = "Age of the oldest queued order that raises an alarm; default 5 minutes, five times acceptable_latency_seconds."
  type        = number
  default     = 300
}

variable "alarm_email" {
  description = "Email address subscribed to an alarm SNS topic (confirm the subscription email). Null creates no topic and the alarms only show in the console."
  type        = string
  default     = null
}

variable "alb_5xx_threshold" {
  description = "5xx answers per minute (from the receiver, or from the ALB itself) that raise the ALB 5xx alarms when seen in 3 of 5 minutes. POST /orders/sync answers 504 by design when payments queue up (the sync experiment), so expect the target alarm during that load test."
  type        = number
  default     = 10
}

variable "tasks_below_desired_minutes" {
  description = "Minutes a service may run fewer tasks than desired before its alarm fires. Long enough for a deployment or a scale-out to start tasks (image pull, health checks), short enough to catch tasks that keep failing to start."
  type        = number
  default     = 10
}

# --- SLO: the asynchronous accept path --------------------------------------------------------

variable "slo_async_target_percent" {
  description = "SLO of the async accept path: the percentage of POST /orders/async requests answered without a 5xx and within slo_async_latency_seconds, over slo_window_days. The error budget is 100 - this."
  type        = number
  default     = 99.9

  validation {
    condition     = var.slo_async_target_percent > 0 && var.slo_async_target_percent < 100
    error_message = "slo_async_target_percent must be between 0 and 100 (exclusive): a 100% target leaves no error budget to burn."
  }
}

variable "slo_async_latency_seconds" {
  description = "A POST /orders/async answered more slowly than this (target response time at the ALB) counts against the SLO like a 5xx."
  type        = number
  default     = 1
}

variable "slo_window_days" {
  description = "SLO window in days. The burn-rate alarms are derived from it: the fast pair fires when 2% of the window's budget burns within 1 hour (14.4x at 30 days), the slow pair when 5% burns within 6 hours (6x at 30 days)."
  type        = number
  default     = 30

  validation {
    condition     = var.slo_window_days >= 1
    error_message = "slo_window_days must be at least 1."
  }
}
