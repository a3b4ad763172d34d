# Networking: this configuration deploys into an existing VPC (README "Networking" explains why
# and what the subnets need). These lookups check the given IDs before anything is created.

data "aws_vpc" "this" {
  id = var.vpc_id
}

data "aws_subnet" "public" {
  for_each = toset(var.public_subnet_ids)
  id       = each.value

  lifecycle {
    postcondition {
      condition     = self.vpc_id == var.vpc_id
      error_message = "Public subnet ${self.id} is in ${self.vpc_id}, not in vpc_id ${var.vpc_id}."
    }
  }
}

data "aws_subnet" "private" {
  for_each = toset(var.private_subnet_ids)
  id       = each.value

  lifecycle {
    postcondition {
      condition     = self.vpc_id == var.vpc_id
      error_message = "Private subnet ${self.id} is in ${self.vpc_id}, not in vpc_id ${var.vpc_id}."
    }
  }
}
