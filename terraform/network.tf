# VPC with two public subnets (ALB, NAT gateway) and two private subnets (ECS tasks) in two AZs.
# Tasks never get public IPs; they reach AWS APIs through a NAT gateway or VPC endpoints (var.egress_mode).

data "aws_availability_zones" "available" {
  #checkov:skip=CKV_AWS_394:Only the first two zone names (sorted) are used, see local.azs; a newly added zone gets a later letter and cannot displace them.
  state = "available"
}

locals {
  azs = slice(sort(data.aws_availability_zones.available.names), 0, 2)

  # Interface endpoints the tasks need when there is no NAT gateway: image pulls (ecr.api, ecr.dkr;
  # layers come from S3 through the gateway endpoint), awslogs, and the two messaging services.
  # The ledger's DynamoDB goes through a gateway endpoint too.
  interface_endpoints = var.egress_mode == "endpoints" ? toset(["ecr.api", "ecr.dkr", "logs", "sns", "sqs"]) : toset([])
}

resource "aws_vpc" "main" {
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true # required for private DNS names of interface endpoints

  tags = { Name = var.name }
}

# Lock down the default security group so nothing can accidentally use its allow-all rules.
resource "aws_default_security_group" "default" {
  vpc_id = aws_vpc.main.id

  tags = { Name = "${var.name}-default-unused" }
}

resource "aws_subnet" "public" {
  count = 2

  vpc_id            = aws_vpc.main.id
  cidr_block        = var.public_subnet_cidrs[count.index]
  availability_zone = local.azs[count.index]
  # Only the ALB and the NAT gateway live here, and both get their addresses explicitly.
  map_public_ip_on_launch = false

  tags = { Name = "${var.name}-public-${local.azs[count.index]}" }
}

resource "aws_subnet" "private" {
  count = 2

  vpc_id            = aws_vpc.main.id
  cidr_block        = var.private_subnet_cidrs[count.index]
  availability_zone = local.azs[count.index]

  tags = { Name = "${var.name}-private-${local.azs[count.index]}" }
}

resource "aws_internet_gateway" "main" {
  vpc_id = aws_vpc.main.id

  tags = { Name = var.name }
}

resource "aws_route_table" "public" {
  vpc_id = aws_vpc.main.id

  tags = { Name = "${var.name}-public" }
}

resource "aws_route" "public_internet" {
  route_table_id         = aws_route_table.public.id
  destination_cidr_block = "0.0.0.0/0"
  gateway_id             = aws_internet_gateway.main.id
}

resource "aws_route_table_association" "public" {
  count = 2

  subnet_id      = aws_subnet.public[count.index].id
  route_table_id = aws_route_table.public.id
}

resource "aws_route_table" "private" {
  vpc_id = aws_vpc.main.id

  tags = { Name = "${var.name}-private" }
}

resource "aws_route_table_association" "private" {
  count = 2

  subnet_id      = aws_subnet.private[count.index].id
  route_table_id = aws_route_table.private.id
}

# --- egress_mode = "nat": one NAT gateway (a single AZ keeps the cost at one gateway; if that AZ
# fails, tasks in the other AZ lose egress until it recovers). -------------------------------------

resource "aws_eip" "nat" {
  count = var.egress_mode == "nat" ? 1 : 0

  domain = "vpc"

  tags = { Name = "${var.name}-nat" }
}

resource "aws_nat_gateway" "main" {
  count = var.egress_mode == "nat" ? 1 : 0

  allocation_id = aws_eip.nat[0].id
  subnet_id     = aws_subnet.public[0].id

  tags = { Name = var.name }

  depends_on = [aws_internet_gateway.main]
}

resource "aws_route" "private_nat" {
  count = var.egress_mode == "nat" ? 1 : 0

  route_table_id         = aws_route_table.private.id
  destination_cidr_block = "0.0.0.0/0"
  nat_gateway_id         = aws_nat_gateway.main[0].id
}

# --- egress_mode = "endpoints": private paths to each AWS API, no internet route at all. ---------

resource "aws_vpc_endpoint" "s3" {
  count = var.egress_mode == "endpoints" ? 1 : 0

  vpc_id            = aws_vpc.main.id
  service_name      = "com.amazonaws.${data.aws_region.current.name}.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = [aws_route_table.private.id]

  tags = { Name = "${var.name}-s3" }
}

# The order ledger (ledger.tf): DynamoDB, like S3, has a free gateway endpoint.
resource "aws_vpc_endpoint" "dynamodb" {
  count = var.egress_mode == "endpoints" ? 1 : 0

  vpc_id            = aws_vpc.main.id
  service_name      = "com.amazonaws.${data.aws_region.current.name}.dynamodb"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = [aws_route_table.private.id]

  tags = { Name = "${var.name}-dynamodb" }
}

resource "aws_vpc_endpoint" "interface" {
  for_each = local.interface_endpoints

  vpc_id              = aws_vpc.main.id
  service_name        = "com.amazonaws.${data.aws_region.current.name}.${each.key}"
  vpc_endpoint_type   = "Interface"
  subnet_ids          = aws_subnet.private[*].id
  security_group_ids  = [aws_security_group.endpoints[0].id]
  private_dns_enabled = true

  tags = { Name = "${var.name}-${each.key}" }
}

resource "aws_security_group" "endpoints" {
  count = var.egress_mode == "endpoints" ? 1 : 0

  name        = "${var.name}-endpoints"
  description = "Interface VPC endpoints: HTTPS from the private subnets"
  vpc_id      = aws_vpc.main.id

  tags = { Name = "${var.name}-endpoints" }
}

resource "aws_vpc_security_group_ingress_rule" "endpoints_https" {
  for_each = var.egress_mode == "endpoints" ? toset(var.private_subnet_cidrs) : toset([])

  security_group_id = aws_security_group.endpoints[0].id
  description       = "HTTPS from tasks in private subnet ${each.key}"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = each.key
}

# --- VPC flow log (rejected traffic by default) -----------------------------------------------------

resource "aws_flow_log" "main" {
  vpc_id               = aws_vpc.main.id
  traffic_type         = var.flow_log_traffic_type
  log_destination_type = "cloud-watch-logs"
  log_destination      = aws_cloudwatch_log_group.flow_log.arn
  iam_role_arn         = aws_iam_role.flow_log.arn

  tags = { Name = var.name }
}

resource "aws_cloudwatch_log_group" "flow_log" {
  name              = "/vpc/${var.name}/flow-log"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.main.arn
}
