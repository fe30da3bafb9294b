#!/bin/sh
# LocalStack ready hook: create Sortie's topics, queues, DLQs, subscriptions and bucket.
# Needs ./bin/sortie built for linux (`task build`), mounted by docker-compose.yml.
set -eu
export AWS_ENDPOINT_URL=http://localhost:4566 AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
sortie infra up
