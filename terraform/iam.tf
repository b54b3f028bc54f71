# Least privilege: every statement names its resources, except ecr:GetAuthorizationToken, which
# AWS only allows on "*".

locals {
  # Only ECS in this account may assume the task roles (confused-deputy protection).
  ecs_tasks_trust = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ecs-tasks.amazonaws.com" }
      Action    = "sts:AssumeRole"
      Condition = {
        StringEquals = { "aws:SourceAccount" = local.account_id }
        ArnLike      = { "aws:SourceArn" = "arn:${local.partition}:ecs:${local.region}:${local.account_id}:*" }
      }
    }]
  })
}

# --- Execution role: used by the ECS agent to pull the image and ship logs, never by our code. --

resource "aws_iam_role" "execution" {
  name               = "${var.name}-ecs-execution"
  description        = "ECS agent for ${var.name}: pulls images from its ECR repositories and writes its log groups"
  assume_role_policy = local.ecs_tasks_trust
}

resource "aws_iam_role_policy" "execution" {
  name = "pull-images-write-logs"
  role = aws_iam_role.execution.id

  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "EcrLoginHasNoResourceLevelPermissions"
        Effect   = "Allow"
        Action   = "ecr:GetAuthorizationToken"
        Resource = "*"
      },
      {
        Sid      = "PullOwnImages"
        Effect   = "Allow"
        Action   = ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
        Resource = [for repo in aws_ecr_repository.service : repo.arn]
      },
      {
        Sid      = "WriteOwnLogGroups"
        Effect   = "Allow"
        Action   = ["logs:CreateLogStream", "logs:PutLogEvents"]
        Resource = [for group in aws_cloudwatch_log_group.service : "${group.arn}:*"]
      },
    ]
  })
}

# --- Receiver task role: publish to the orders topic, nothing else. ---------------------------

resource "aws_iam_role" "receiver" {
  name               = "${var.name}-receiver-task"
  description        = "${var.name} receiver: publishes accepted orders to the orders topic"
  assume_role_policy = local.ecs_tasks_trust
}

resource "aws_iam_role_policy" "receiver" {
  name = "publish-orders"
  role = aws_iam_role.receiver.id

  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "PublishToOrdersTopic" # also covers PublishBatch
        Effect   = "Allow"
        Action   = "sns:Publish"
        Resource = aws_sns_topic.orders.arn
      },
      {
        # The topic is encrypted with the stack key; publishers need a data key, and only via SNS.
        Sid      = "EncryptThroughSnsOnly"
        Effect   = "Allow"
        Action   = ["kms:GenerateDataKey*", "kms:Decrypt"]
        Resource = aws_kms_key.main.arn
        Condition = {
          StringEquals = { "kms:ViaService" = "sns.${local.region}.amazonaws.com" }
        }
      },
    ]
  })
}

# --- Worker task role: consume the orders queue, dead-letter into its DLQ. ---------------------

resource "aws_iam_role" "worker" {
  name               = "${var.name}-worker-task"
  description        = "${var.name} worker: consumes the orders queue and dead-letters poison messages"
  assume_role_policy = local.ecs_tasks_trust
}

resource "aws_iam_role_policy" "worker" {
  name = "consume-orders"
  role = aws_iam_role.worker.id

  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "ConsumeOrdersQueue" # the *Batch calls authorize as their single-message actions
        Effect   = "Allow"
        Action   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes"]
        Resource = aws_sqs_queue.orders.arn
      },
      {
        Sid      = "DeadLetterPoisonMessages"
        Effect   = "Allow"
        Action   = ["sqs:SendMessage", "sqs:GetQueueAttributes"]
        Resource = aws_sqs_queue.orders_dlq.arn
      },
    ]
  })
}

# --- VPC flow log delivery role. --------------------------------------------------------------

resource "aws_iam_role" "flow_log" {
  name        = "${var.name}-flow-log"
  description = "VPC flow logs for ${var.name}: writes the flow-log log group"

  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "vpc-flow-logs.amazonaws.com" }
      Action    = "sts:AssumeRole"
      Condition = {
        StringEquals = { "aws:SourceAccount" = local.account_id }
      }
    }]
  })
}

resource "aws_iam_role_policy" "flow_log" {
  name = "write-flow-log"
  role = aws_iam_role.flow_log.id

  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "WriteFlowLogGroup"
        Effect   = "Allow"
        Action   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
        Resource = [aws_cloudwatch_log_group.flow_log.arn, "${aws_cloudwatch_log_group.flow_log.arn}:*"]
      },
      {
        Sid      = "FindLogGroupsOfThisAccount" # DescribeLogGroups is authorized on the account's log-group:* only
        Effect   = "Allow"
        Action   = "logs:DescribeLogGroups"
        Resource = "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:*"
      },
    ]
  })
}
