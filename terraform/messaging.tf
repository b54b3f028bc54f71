# receiver -> SNS topic -> (raw delivery) -> SQS queue -> worker; after max_receive_count failed
# deliveries SQS moves a message to the DLQ. bus::embedded::EmbeddedStack mirrors exactly this shape.

resource "aws_sns_topic" "orders" {
  name              = "${var.name}-orders"
  kms_master_key_id = aws_kms_key.main.arn
}

locals {
  # Every action a topic policy can name (the set in SNS's own default policy).
  sns_topic_actions = [
    "SNS:GetTopicAttributes", "SNS:SetTopicAttributes", "SNS:AddPermission", "SNS:RemovePermission",
    "SNS:DeleteTopic", "SNS:Subscribe", "SNS:ListSubscriptionsByTopic", "SNS:Publish",
  ]
}

# Only the receiver publishes orders: an order on this topic is charged, so nothing else in the account
# may put one there, whatever its IAM policies allow (an explicit Deny wins). And nothing reaches the
# topic over plain HTTP. Administering the topic stays with the account's IAM policies.
resource "aws_sns_topic_policy" "orders" {
  arn = aws_sns_topic.orders.arn

  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "ReceiverPublishesOrders"
        Effect    = "Allow"
        Principal = { AWS = aws_iam_role.receiver.arn }
        Action    = "SNS:Publish"
        Resource  = aws_sns_topic.orders.arn
      },
      {
        Sid       = "NobodyElsePublishes"
        Effect    = "Deny"
        Principal = { AWS = "*" }
        Action    = "SNS:Publish"
        Resource  = aws_sns_topic.orders.arn
        Condition = {
          ArnNotEquals = { "aws:PrincipalArn" = aws_iam_role.receiver.arn }
        }
      },
      {
        Sid       = "DenyRequestsWithoutTls"
        Effect    = "Deny"
        Principal = { AWS = "*" }
        Action    = local.sns_topic_actions
        Resource  = aws_sns_topic.orders.arn
        Condition = {
          Bool = { "aws:SecureTransport" = "false" }
        }
      },
    ]
  })
}

resource "aws_sqs_queue" "orders" {
  name                       = "${var.name}-orders"
  visibility_timeout_seconds = var.queue_visibility_timeout_seconds
  message_retention_seconds  = var.queue_retention_seconds
  receive_wait_time_seconds  = var.queue_receive_wait_seconds
  sqs_managed_sse_enabled    = true

  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.orders_dlq.arn
    maxReceiveCount     = var.max_receive_count
  })

  lifecycle {
    precondition {
      condition     = var.queue_visibility_timeout_seconds > var.payment_latency_seconds
      error_message = "queue_visibility_timeout_seconds must exceed payment_latency_seconds, or every order is delivered twice while it is still being paid for."
    }
  }
}

resource "aws_sqs_queue" "orders_dlq" {
  name                      = "${var.name}-orders-dlq"
  message_retention_seconds = var.dlq_retention_seconds
  sqs_managed_sse_enabled   = true

  lifecycle {
    precondition {
      condition     = var.dlq_retention_seconds > var.queue_retention_seconds
      error_message = "dlq_retention_seconds must exceed queue_retention_seconds: a message moved to the DLQ keeps its original enqueue time."
    }
  }
}

# Only the orders queue may use this DLQ, so a misconfigured queue elsewhere cannot dump into it.
resource "aws_sqs_queue_redrive_allow_policy" "orders_dlq" {
  queue_url = aws_sqs_queue.orders_dlq.id

  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.orders.arn]
  })
}

# SNS may send to the queue only on behalf of this one topic.
resource "aws_sqs_queue_policy" "orders" {
  queue_url = aws_sqs_queue.orders.id

  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "OrdersTopicDeliversToOrdersQueue"
      Effect    = "Allow"
      Principal = { Service = "sns.amazonaws.com" }
      Action    = "sqs:SendMessage"
      Resource  = aws_sqs_queue.orders.arn
      Condition = {
        ArnEquals = { "aws:SourceArn" = aws_sns_topic.orders.arn }
      }
    }]
  })
}

# Raw delivery: the queue body is exactly the published WireMessage JSON, no SNS envelope.
resource "aws_sns_topic_subscription" "orders_queue" {
  topic_arn            = aws_sns_topic.orders.arn
  protocol             = "sqs"
  endpoint             = aws_sqs_queue.orders.arn
  raw_message_delivery = true

  # A message SNS cannot deliver to the queue (queue policy or key broken, queue deleted) is kept
  # here after SNS's retries instead of being discarded: its order was already answered 202.
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.orders_undelivered.arn
  })

  # Subscribe only once SNS is allowed to deliver, so no early message is dropped.
  depends_on = [aws_sqs_queue_policy.orders, aws_sqs_queue_policy.orders_undelivered]
}

# The subscription's DLQ: accepted orders SNS failed to deliver to the orders queue. It is not the
# orders queue's DLQ (orders_dlq holds messages the workers failed on); its messages never reached
# a worker. Move them into the orders queue once the cause is fixed (see the README).
resource "aws_sqs_queue" "orders_undelivered" {
  name                      = "${var.name}-orders-undelivered"
  message_retention_seconds = var.dlq_retention_seconds
  sqs_managed_sse_enabled   = true
}

resource "aws_sqs_queue_policy" "orders_undelivered" {
  queue_url = aws_sqs_queue.orders_undelivered.id

  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "OrdersTopicDeadLettersHere"
      Effect    = "Allow"
      Principal = { Service = "sns.amazonaws.com" }
      Action    = "sqs:SendMessage"
      Resource  = aws_sqs_queue.orders_undelivered.arn
      Condition = {
        ArnEquals = { "aws:SourceArn" = aws_sns_topic.orders.arn }
      }
    }]
  })
}
