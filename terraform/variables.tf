# Inputs of the orderflow stack. Every variable has a default that deploys the lab setup
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

variable "image_tag" {
  description = "Image tag to run from both ECR repositories. Tags are immutable, so push a new tag (the git commit) per release."
  type        = string
  default     = "0.1.0"
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
