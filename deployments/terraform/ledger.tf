# The job ledger (pkg/ledger): one DynamoDB item per job, keyed "job#<job id>" in "pk",
# holding its stages' claims and timestamps. On-demand billing; items expire through TTL on
# "expires_at" (Unix seconds, set to 30 days after a job's last write). `sortie infra up`
# (pkg/infra table.go) creates the same table for the local cloud and LocalStack.

resource "aws_dynamodb_table" "ledger" {
  name         = "${var.prefix}-ledger" # pkg/bus Topology.LedgerTableName
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "pk"

  attribute {
    name = "pk"
    type = "S"
  }

  ttl {
    attribute_name = "expires_at"
    enabled        = true
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled = true
  }
}

output "ledger_table" {
  description = "The job ledger's DynamoDB table (SORTIE_PREFIX-ledger)."
  value       = aws_dynamodb_table.ledger.name
}
