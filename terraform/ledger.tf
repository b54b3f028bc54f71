# The order ledger: one item per accepted order, keyed by order_id. The receiver writes it before it
# publishes (and marks it failed when the publish fails); workers claim, record the charge and settle
# it with conditional updates. Items carry their own expiry (expires_at, epoch seconds) which
# DynamoDB's TTL deletes, typically within a few days after it passes: the services must check
# expires_at themselves rather than trust that an expired item is gone.
#
# The worker registry is one more item of this table (order_id = "worker-registry", one map attribute per
# worker, rewritten by each worker's heartbeat, read by key for order ETAs): no index and no Query.

resource "aws_dynamodb_table" "orders" {
  name = "${var.name}-orders"

  # On demand: no capacity to plan or autoscale, nothing billed while idle; a flash sale of 60 orders/s
  # is a few hundred writes per second, far below the on-demand limits of a new table.
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "order_id"

  attribute {
    name = "order_id"
    type = "S"
  }

  ttl {
    enabled        = true
    attribute_name = "expires_at"
  }

  # The stack's customer-managed key (kms.tf) instead of the AWS-owned default: key use shows in
  # CloudTrail and the key can be disabled. The task roles may use it only through DynamoDB (iam.tf).
  server_side_encryption {
    enabled     = true
    kms_key_arn = aws_kms_key.main.arn
  }

  point_in_time_recovery {
    enabled = true
  }

  deletion_protection_enabled = var.ledger_deletion_protection

  lifecycle {
    precondition {
      condition     = var.ledger_retention_days * 86400 > var.dlq_retention_seconds
      error_message = "ledger_retention_days must outlast dlq_retention_seconds: a message redriven after its order's item expired would be charged again."
    }
  }

  tags = { Name = "${var.name}-orders" }
}
