# Least privilege: every statement names its resources, except ecr:GetAuthorizationToken, which
# AWS only allows on "*".
#
# Roles are global to the account, unlike everything else here: they get a name_prefix (Terraform adds a
# unique suffix), so the same var.name deployed in two regions does not collide. The prefix is at most
# 38 characters: var.name (23 at most) and "-ecs-execution-" (15).

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
  name_prefix        = "${var.name}-ecs-execution-"
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

# --- Receiver task role: publish to the orders topic (+ the order ledger, below). --------------

resource "aws_iam_role" "receiver" {
  name_prefix        = "${var.name}-receiver-task-"
  description        = "${var.name} receiver: records accepted orders in the ledger and publishes them to the orders topic"
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

# --- Worker task role: consume the orders queue, dead-letter into its DLQ (+ the ledger, below). -

resource "aws_iam_role" "worker" {
  name_prefix        = "${var.name}-worker-task-"
  description        = "${var.name} worker: consumes the orders queue, settles orders in the ledger, dead-letters poison messages"
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

# --- Order ledger (ledger.tf): item-level access to the one table, for both task roles. ----------
# No Scan or Query (every access is by order_id), no BatchWriteItem/DeleteItem (items expire by TTL),
# no table-level actions. Conditional writes (ConditionExpression, ReturnValuesOnConditionCheckFailure)
# need no extra action; a TransactWriteItems with a ConditionCheck would need dynamodb:ConditionCheckItem.

locals {
  ledger_actions = {
    # Creates the order's item before publishing, reads it back, marks it failed when the publish fails.
    receiver = ["dynamodb:PutItem", "dynamodb:GetItem", "dynamodb:UpdateItem"]
    # Claims the order, records the charge and settles it, all as conditional updates of that item;
    # PutItem replaces an item whose TTL passed but DynamoDB has not yet deleted. UpdateItem also
    # writes the worker's entry in the worker registry (one item, read by key: no Query needed).
    worker = ["dynamodb:PutItem", "dynamodb:GetItem", "dynamodb:UpdateItem"]
  }
  ledger_roles = { receiver = aws_iam_role.receiver.id, worker = aws_iam_role.worker.id }
}

resource "aws_iam_role_policy" "ledger" {
  for_each = local.ledger_roles

  name = "order-ledger"
  role = each.value

  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "OrderLedgerItems"
        Effect   = "Allow"
        Action   = local.ledger_actions[each.key]
        Resource = aws_dynamodb_table.orders.arn
      },
      {
        # The table is encrypted with the stack key: DynamoDB decrypts the table key on behalf of
        # the caller. Only through DynamoDB, where these roles can reach no other table.
        Sid      = "LedgerKeyThroughDynamoDbOnly"
        Effect   = "Allow"
        Action   = ["kms:Decrypt", "kms:GenerateDataKey*"]
        Resource = aws_kms_key.main.arn
        Condition = {
          StringEquals = { "kms:ViaService" = "dynamodb.${local.region}.amazonaws.com" }
        }
      },
    ]
  })
}

# --- VPC flow log delivery role. --------------------------------------------------------------

resource "aws_iam_role" "flow_log" {
  name_prefix = "${var.name}-flow-log-"
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
