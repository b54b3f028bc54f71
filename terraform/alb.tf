# Public ALB in front of the receiver. Port 80 forwards to the receiver, or redirects to 443 when
# var.certificate_arn is set.

locals {
  https = var.certificate_arn != null
}

resource "aws_lb" "main" {
  #checkov:skip=CKV_AWS_150:Lab stack, torn down with terraform destroy after each session; enable for a long-lived deployment.
  #checkov:skip=CKV_AWS_91:Access logs need an S3 bucket with its own policy and lifecycle; the ALB's request, latency and error-code metrics already reach CloudWatch.
  #checkov:skip=CKV2_AWS_28:WAF costs $5/month plus $0.60 per million requests, billed on every load-test request; allowed_ingress_cidrs restricts clients instead.
  name               = var.name
  load_balancer_type = "application"
  internal           = false
  subnets            = aws_subnet.public[*].id
  security_groups    = [aws_security_group.alb.id]

  drop_invalid_header_fields = true
  # A lab stack is torn down with `terraform destroy`; turn this on for anything long-lived.
  enable_deletion_protection = false
}

resource "aws_lb_target_group" "receiver" {
  #checkov:skip=CKV_AWS_378:TLS terminates at the ALB (var.certificate_arn); the ALB-to-task hop stays in private subnets, allowed only from the ALB security group.
  name        = "${var.name}-receiver"
  port        = local.receiver_port
  protocol    = "HTTP"
  target_type = "ip" # Fargate tasks register by their ENI address
  vpc_id      = aws_vpc.main.id

  # Long enough for a draining task's longest request (POST /orders/sync), short enough to keep
  # deployments fast: see local.receiver_deregistration_delay.
  deregistration_delay = local.receiver_deregistration_delay

  health_check {
    path                = "/health"
    matcher             = "200"
    interval            = 15
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }
}

# The same receiver tasks, reached only by POST /orders/async (the listener rule below). ALB metrics
# have no path dimension, only a target group one: this group's RequestCount, 5xx count and response
# times are the async accept path alone, so its SLO (slo.tf) is not burnt by POST /orders/sync, whose
# 504s under a flash sale are the experiment's expected result.
resource "aws_lb_target_group" "receiver_async" {
  #checkov:skip=CKV_AWS_378:TLS terminates at the ALB (var.certificate_arn); the ALB-to-task hop stays in private subnets, allowed only from the ALB security group.
  name        = "${var.name}-async" # the 32-character limit leaves no room for "-receiver-async"
  port        = local.receiver_port
  protocol    = "HTTP"
  target_type = "ip"
  vpc_id      = aws_vpc.main.id

  # An async request returns as soon as its publish is acknowledged; the same delay as the default
  # group keeps one rule for both.
  deregistration_delay = local.receiver_deregistration_delay

  health_check {
    path                = "/health"
    matcher             = "200"
    interval            = 15
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }
}

resource "aws_lb_listener_rule" "orders_async" {
  # The listener that forwards: HTTPS with a certificate (port 80 then only redirects), else HTTP.
  listener_arn = local.https ? aws_lb_listener.https[0].arn : aws_lb_listener.http.arn
  priority     = 10

  condition {
    path_pattern {
      values = ["/orders/async"]
    }
  }
  condition {
    http_request_method {
      values = ["POST"]
    }
  }

  action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.receiver_async.arn
  }
}

resource "aws_lb_listener" "http" {
  load_balancer_arn = aws_lb.main.arn
  port              = 80
  protocol          = "HTTP"

  default_action {
    type             = local.https ? "redirect" : "forward"
    target_group_arn = local.https ? null : aws_lb_target_group.receiver.arn

    dynamic "redirect" {
      for_each = local.https ? [1] : []
      content {
        port        = "443"
        protocol    = "HTTPS"
        status_code = "HTTP_301"
      }
    }
  }
}

resource "aws_lb_listener" "https" {
  count = local.https ? 1 : 0

  load_balancer_arn = aws_lb.main.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.receiver.arn
  }
}

resource "aws_security_group" "alb" {
  name        = "${var.name}-alb"
  description = "ALB: HTTP(S) from allowed clients, HTTP to receiver tasks"
  vpc_id      = aws_vpc.main.id

  tags = { Name = "${var.name}-alb" }
}

resource "aws_vpc_security_group_ingress_rule" "alb_from_clients" {
  # One rule per (port, CIDR); 443 only exists with a certificate.
  for_each = {
    for pair in setproduct(local.https ? [80, 443] : [80], var.allowed_ingress_cidrs) :
    "${pair[0]}-${pair[1]}" => { port = pair[0], cidr = pair[1] }
  }

  security_group_id = aws_security_group.alb.id
  description       = "Clients on port ${each.value.port}"
  ip_protocol       = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = each.value.cidr
}

resource "aws_vpc_security_group_egress_rule" "alb_to_receiver" {
  security_group_id            = aws_security_group.alb.id
  description                  = "HTTP to receiver tasks"
  ip_protocol                  = "tcp"
  from_port                    = local.receiver_port
  to_port                      = local.receiver_port
  referenced_security_group_id = aws_security_group.receiver.id
}
